from incasem_like.cli import main

raise SystemExit(main())
