"""AlgoPerf-compatible workload layer: datasets, workloads, submission runner, tuning and scoring."""
