from helpdeskd.cli.main import main

raise SystemExit(main())
