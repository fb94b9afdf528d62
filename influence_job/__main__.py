from influence_job.cli import main

raise SystemExit(main())
