"""The synthetic case: simulated CE-T1, FLAIR and DSC with known truth (not patient data)."""
