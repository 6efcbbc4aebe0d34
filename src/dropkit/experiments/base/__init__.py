"""The base every stage of the experiments stands on: a run's record (`record`), the run
folder's layout (`layout`), atomic files (`io`), the one-writer lock (`lock`), paired
statistics (`stats`) and a job's fixed thread count (`threads`). It imports no other stage."""
