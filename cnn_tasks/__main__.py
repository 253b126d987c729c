"""`python -m cnn_tasks`: see cnn_tasks/cli.py."""

from cnn_tasks.cli import main

raise SystemExit(main())
