from chimed_pipeline.cli import main

raise SystemExit(main())
