"""Job lifecycle for the service: validate, queue behind per-model slots, run, stop, recover."""
