from trolleyfs.cli import main

raise SystemExit(main())
