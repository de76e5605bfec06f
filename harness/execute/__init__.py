"""Execute: run a plan's job graph on Ray (learn first, bounded in flight), score outputs, write results."""
