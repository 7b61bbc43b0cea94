import pytest

from nemo_craft.models.tokenizer import CharTokenizer, HFTokenizer, load_tokenizer

CHAT = [
    {"role": "system", "content": "Push boxes."},
    {"role": "user", "content": "State:\n#@$.#"},
    {"role": "assistant", "content": "<action>up</action>"},
    {"role": "user", "content": "again"},
]


def test_char_vocab_is_fixed():
    tok = CharTokenizer()
    assert tok.vocab_size == 104
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2) and tok.stop_ids == [2]
    assert tok.tokens[:7] == ["<pad>", "<bos>", "<eos>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]
    assert tok.encode("\t\n A~") == [7, 8, 9, 9 + ord("A") - 32, 9 + ord("~") - 32]
    assert CharTokenizer().tokens == tok.tokens


def test_char_round_trip_and_special_tokens():
    tok = CharTokenizer()
    text = "Hello, <world>! <eos> <|user|>x"
    ids = tok.encode(text, add_bos=True)
    assert ids[0] == tok.bos_id and tok.eos_id in ids and ids.count(tok.eos_id) == 1
    assert tok.decode(ids[1:]) == text
    assert tok.decode(ids, skip_special_tokens=True) == "Hello, <world>!  x"


def test_char_unknown_characters_and_padded_ids():
    tok = CharTokenizer()
    assert tok.encode("é€") == [tok.unk_id, tok.unk_id]
    assert tok.decode([tok.vocab_size, 127, 9 + ord("a") - 32]) == "a"  # ids of a padded vocab decode to ""


def test_char_chat_template():
    tok = CharTokenizer()
    text = tok.apply_chat_template(CHAT)
    assert text == (
        "<|system|>Push boxes.<eos><|user|>State:\n#@$.#<eos><|assistant|><action>up</action><eos>"
        "<|user|>again<eos><|assistant|>"
    )
    ids = tok.apply_chat_template(CHAT, tokenize=True)
    assert ids == tok.encode(text) and ids[-1] == tok.tokens.index("<|assistant|>")
    assert not tok.apply_chat_template(CHAT[:1], add_generation_prompt=False).endswith("<|assistant|>")
    with pytest.raises(ValueError, match="role 'tool'"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}])


def _hf_tokenizer_dir(tmp_path, chat_template=None, with_pad=False):
    from tokenizers import Tokenizer, decoders
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials + [chr(c) for c in range(32, 127)] + ["\n"])}
    core = Tokenizer(BPE(vocab=vocab, merges=[], unk_token=None))
    core.decoder = decoders.Fuse()
    hf = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>" if with_pad else None,
        additional_special_tokens=specials[1:],
    )
    if chat_template:
        hf.chat_template = chat_template
    hf.save_pretrained(str(tmp_path))
    return str(tmp_path)


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_hf_tokenizer_interface(tmp_path):
    tok = load_tokenizer(_hf_tokenizer_dir(tmp_path, CHATML))
    assert isinstance(tok, HFTokenizer)
    assert tok.eos_id == 0 and tok.pad_id == tok.eos_id and tok.bos_id is None  # no pad token: eos
    assert tok.stop_ids == [0, 2]  # eos, then <|im_end|>
    ids = tok.encode("hi there")
    assert tok.decode(ids) == "hi there" and tok.vocab_size == 99
    text = tok.apply_chat_template(CHAT[:2])
    assert (
        text == "<|im_start|>system\nPush boxes.<|im_end|>\n<|im_start|>user\nState:\n#@$.#<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert tok.apply_chat_template(CHAT[:2], tokenize=True) == tok.encode(text)


def test_hf_tokenizer_without_chat_template_uses_the_simple_one(tmp_path):
    tok = HFTokenizer(_hf_tokenizer_dir(tmp_path, with_pad=True))
    assert tok.apply_chat_template(CHAT[1:2]) == "<|user|>State:\n#@$.#<|endoftext|><|assistant|>"


def test_load_tokenizer_rules(tmp_path):
    assert isinstance(load_tokenizer("char"), CharTokenizer)
    assert isinstance(load_tokenizer(None), CharTokenizer)
    assert isinstance(load_tokenizer(None, hf_path=_hf_tokenizer_dir(tmp_path)), HFTokenizer)
    with pytest.raises(FileNotFoundError, match="not a local directory"):
        load_tokenizer("Qwen/Qwen3-8B")
