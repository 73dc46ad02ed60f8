from dsbackup.cli.main import main

raise SystemExit(main())
