"""Fuzz harness: seeded hard data sets, their lme4 reference fits, and a report.

- :mod:`validation.fuzz.cases`: the fixed set of cases (``CASES``), each a
  name, category, lme4 formula and a seeded data set with a checksum;
- :mod:`validation.fuzz.oracle`: an independent, numerically stable
  (QR-based) log-likelihood and REML criterion at given estimates;
- :mod:`validation.fuzz.write_data`: writes the cases' CSVs and a manifest
  for ``validation/r/fuzz_lme4.R`` (to a git-ignored folder);
- ``python -m validation.fuzz``: fits every case with the current sm_hlm and
  prints the comparison with the committed lme4 reference
  (``validation/r/fuzz_lme4.json``) by category.
"""
