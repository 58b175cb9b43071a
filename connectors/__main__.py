"""``python -m connectors`` = ``walduck connector``."""

from connectors.cli import app

if __name__ == "__main__":
    app(prog_name="walduck connector")
