from saesteer.cli import main

raise SystemExit(main())
