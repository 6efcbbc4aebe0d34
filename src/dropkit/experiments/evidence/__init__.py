"""From a run folder's results to evidence: every claim's verdict (`claims`), the report
(`report`) and its figures (`figures`). Above `config` and `base`; it never trains."""
