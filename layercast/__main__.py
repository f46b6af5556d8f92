"""`python -m layercast` = the `layercast` command."""

from layercast.cli import main

raise SystemExit(main())
