from helpdeskd.cli import main

raise SystemExit(main())
