"""``python -m advex``: the same as the ``advex`` command."""

from advex.cli import app

if __name__ == "__main__":
    app(prog_name="advex")
