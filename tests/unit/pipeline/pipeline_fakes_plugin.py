"""Recipe plugin for tests: importing it registers the fake stages (in every worker process too)."""

import pipeline_fakes

pipeline_fakes.install()
