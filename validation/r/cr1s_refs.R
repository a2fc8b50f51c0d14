# clubSandwich's CR1S (Stata's and statsmodels' cluster correction) and CR1 for lmer fits,
# written to validation/r/cr1s_refs.json (read by tests/test_cluster_tests.py):
#
#     Rscript validation/r/cr1s_refs.R
#
# slope.csv, y ~ x*z + (x | group), ML and REML: lme4's theta, fixef names and
# vcovCR(fit, cluster = group, type = "CR1S" / "CR1") as full matrices.
source(file.path("validation/r", "common.R"))
suppressPackageStartupMessages(library(clubSandwich))

d <- read_sim("slope.csv")
out <- list()
for (REML in c(FALSE, TRUE)) {
  fit <- lmer(y ~ x * z + (x | group), data = d, REML = REML,
              control = lmerControl(optimizer = "nloptwrap",
                                    optCtrl = list(ftol_abs = 1e-12, xtol_abs = 1e-10)))
  key <- paste0("slope_", if (REML) "REML" else "ML")
  out[[key]] <- list(REML = REML, theta = I(unname(getME(fit, "theta"))),
                     fixef_names = I(names(fixef(fit))),
                     CR1S = unname(as.matrix(vcovCR(fit, cluster = d$group, type = "CR1S"))),
                     CR1 = unname(as.matrix(vcovCR(fit, cluster = d$group, type = "CR1"))),
                     nobs = nobs(fit), n_groups = length(unique(d$group)))
}
write_json_full(out, file.path(here, "cr1s_refs.json"))
