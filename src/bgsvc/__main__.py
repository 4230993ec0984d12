from bgsvc.cli import main

raise SystemExit(main())
