"""The soak harness's record of a run (`record`) and the report computed from it (`report`)."""
