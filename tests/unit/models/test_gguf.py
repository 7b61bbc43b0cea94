"""The GGUF source rules of ``nemo-craft convert from-gguf`` (no conversion runs here; the real
conversion is tests/real_model's session fixture)."""

import pytest

from nemo_craft.models.gguf import convert_gguf, resolve_gguf


def test_a_bad_source_names_itself_and_the_short_names(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'nope.gguf' is neither a \.gguf file nor .*smollm2"):
        resolve_gguf("nope.gguf")
    not_gguf = tmp_path / "model.bin"
    not_gguf.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="model.bin"):
        resolve_gguf(str(not_gguf))


def test_bad_parts_and_dtype_are_refused(tmp_path):
    with pytest.raises(ValueError, match="parts=\\('weights',\\)"):
        convert_gguf("smollm2", str(tmp_path), parts=("weights",))
    with pytest.raises(ValueError, match="dtype='fp16'"):
        convert_gguf("smollm2", str(tmp_path), dtype="fp16")


def test_the_cli_reports_a_missing_gguf_in_one_line(tmp_path, capsys):
    from nemo_craft.cli.convert import main

    assert main(["from-gguf", str(tmp_path / "absent.gguf"), "--out", str(tmp_path / "out")]) == 2
    assert "absent.gguf" in capsys.readouterr().err
