"""placeholder: replaced by the testlib branch."""
