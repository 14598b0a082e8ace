"""`python -m proxy` is the same as the `llm-sidecar` command."""

from proxy.cli import main

raise SystemExit(main())
