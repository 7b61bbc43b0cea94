"""Where the package's own files are."""

from pathlib import Path

__all__ = ["CONF_DIR"]

# Inside the package, so that a wheel ships it: in a checkout nemo_craft/conf links to the
# top-level conf/ that users edit (setup.cfg's package_data copies the files into the wheel).
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
