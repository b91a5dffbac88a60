"""What CSMs read and write: the store (activity log, assignments, snoozes, alerts sent), the alerts
and the pages served under ``/ui``."""
