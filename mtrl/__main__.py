from mtrl.cli import main

raise SystemExit(main())
