from fedimod.cli import main

raise SystemExit(main())
