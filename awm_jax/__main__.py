"""``python -m awm_jax COMMAND [ARGS...]``: one front door for every command line."""

import sys


def main(argv: list[str] | None = None) -> int:
    """Dispatches ``argv[0]`` to its command (see :data:`awm_jax.cli.COMMANDS`)."""
    from awm_jax.cli import COMMANDS, launch

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m awm_jax {{{','.join(COMMANDS)}}} [ARGS...]\n\n"
              "commands:\n  compare   is model B derived from model A? (python -m awm_jax compare A B)\n"
              "  audit     every pair of many models, or models against references\n"
              "  download  fetch only what awm_jax reads from the hub\n"
              "  scan      which catalogued base model is this one derived from? (scan MODEL --catalogue DIR)\n"
              "  catalogue build, verify, publish or fetch a catalogue of base-model sketches\n"
              "  cache     list, size or prune the fingerprint cache (cache prune --max-gb N)\n\n"
              "python -m awm_jax COMMAND --help describes each command.")
        return 0 if argv else 2
    if argv[0] == "--version":
        from awm_jax._version import __version__

        print(f"awm_jax {__version__}")
        return 0
    if argv[0] not in COMMANDS:
        print(f"awm_jax: error: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return launch(argv[0], argv[1:])


if __name__ == "__main__":
    from awm_jax.cli import run_as_main

    run_as_main()
