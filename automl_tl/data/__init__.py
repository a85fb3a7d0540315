"""Data: a user's collection as it comes, read (readers) and made into a validated, split bundle (bundle)."""
