# lme4's profile-likelihood intervals for models with several grouping factors
# (issue 8: conf_int_profile of sm_hlm.multilevel), written to
# validation/r/multilevel_profile_refs.json.
#
#     Rscript validation/r/multilevel_profile_refs.R
#
# For each case: confint(profile(fit), level = 0.95) of the ML fit, rows .sig01...,
# .sigma and the fixed effects (lme4's names; the .sig order is lme4's: terms by
# decreasing number of levels, within a term sd, cor, sd column by column).
source(file.path("validation/r", "common.R"))

cases <- list(
  pastes = list(data = "pastes.csv", formula = "strength ~ 1 + (1 | batch) + (1 | batch:cask)"),
  machines = list(data = "machines.csv",
                  formula = "score ~ Machine + (1 | Worker) + (1 | Worker:Machine)"),
  penicillin = list(data = "penicillin.csv", formula = "diameter ~ 1 + (1 | plate) + (1 | sample)")
)
out <- list()
for (nm in names(cases)) {
  cs <- cases[[nm]]
  d <- read.csv(file.path(data_dir, cs$data), stringsAsFactors = TRUE)
  fit <- lmer(as.formula(cs$formula), data = d, REML = FALSE,
              control = lmerControl(optimizer = "nloptwrap",
                                    optCtrl = list(ftol_abs = 1e-12, xtol_abs = 1e-10)))
  ci <- confint(profile(fit), level = 0.95)
  out[[nm]] <- list(data = cs$data, formula = cs$formula, rows = I(rownames(ci)),
                    lower = unname(ci[, 1]), upper = unname(ci[, 2]),
                    logLik = as.numeric(logLik(fit)), lme4_version = lme4_version)
}
write_json_full(out, file.path(here, "multilevel_profile_refs.json"))
