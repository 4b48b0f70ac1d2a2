"""The student side: the self-check the released helper mirrors, and ./kit validate on a student's own machine."""
