"""``python -m handssl`` runs the command line (see :mod:`handssl.cli`)."""

from handssl.cli import main

if __name__ == "__main__":
    main()
