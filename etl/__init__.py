"""leveranse: nightly deliveries from NPR and KPR to the national medical quality registers."""

__version__ = "0.1.0"
