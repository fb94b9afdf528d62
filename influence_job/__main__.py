from influence_job.cli.main import main

raise SystemExit(main())
