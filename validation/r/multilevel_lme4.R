# lme4 reference fits with several grouping factors (nested and crossed), for
# tests/test_engine_multilevel.py.
#
# Run from the repository root (after `python -m validation.multilevel_data`,
# which writes the simulated data/ml_*.csv):
#
#     Rscript validation/r/multilevel_lme4.R
#
# Also writes the classic data sets it fits to validation/r/data/: lme4's
# Penicillin and Pastes, nlme's Oats and Machines (grouping columns as text).
# Writes validation/r/multilevel_lme4.json: one object per case, key
# "<case>_ML" / "<case>_REML", with fields
#   data, formula, REML, logLik, deviance (ML: deviance(fit); REML: REMLcrit(fit)),
#   nobs, ngrps (factor -> levels), theta (named, lme4's order: terms sorted by
#   decreasing number of levels), fixef (named), vcov (rows, fixef order), se,
#   sigma, feval, isSingular, warnings, messages, conv_messages,
#   ranef: factor -> {levels, names, values (one row per level)},
#   condvar: factor -> list, one entry per term on that factor, of
#     {names, cov: [levels x q x q]} from ranef(fit, condVar = TRUE),
#   tight: the same model refitted with tight optimizer tolerances
#     (nloptwrap BOBYQA, ftol_abs = 1e-12, xtol_abs = 1e-10, ftol_rel = 1e-15,
#     xtol_rel = 1e-12, maxeval = 1e5; nloptr's default xtol_rel is 1e-4),
#     {theta, logLik, deviance, fixef, se, feval}: the likelihood is so flat along
#     some directions of theta that the default stopping rule (ftol_abs = 1e-8)
#     leaves fixed effects uncertain in the 5th digit (ml_four), so fixed effects
#     are compared with this fit,
#   lme4_version, R_version.
# The main fits use lmerControl() defaults (BOBYQA through nloptwrap).

local({
  arg <- grep("^--file=", commandArgs(trailingOnly = FALSE), value = TRUE)
  dir <- if (length(arg)) dirname(sub("^--file=", "", arg[1])) else "validation/r"
  source(file.path(dir, "common.R"))
})
suppressPackageStartupMessages(library(nlme))

# ------------------------------------------------------------ classic data
write_classic <- function() {
  pen <- lme4::Penicillin
  write.csv(data.frame(diameter = pen$diameter, plate = as.character(pen$plate),
                       sample = as.character(pen$sample)),
            file.path(data_dir, "penicillin.csv"), row.names = FALSE)
  pas <- lme4::Pastes
  write.csv(data.frame(strength = pas$strength, batch = as.character(pas$batch),
                       cask = as.character(pas$cask)),
            file.path(data_dir, "pastes.csv"), row.names = FALSE)
  oats <- as.data.frame(nlme::Oats)
  write.csv(data.frame(yield = oats$yield, nitro = oats$nitro,
                       Block = as.character(oats$Block), Variety = as.character(oats$Variety)),
            file.path(data_dir, "oats.csv"), row.names = FALSE)
  mac <- as.data.frame(nlme::Machines)
  write.csv(data.frame(score = mac$score, Worker = as.character(mac$Worker),
                       Machine = as.character(mac$Machine)),
            file.path(data_dir, "machines.csv"), row.names = FALSE)
}
write_classic()

read_case <- function(name, factors) {
  d <- read.csv(file.path(data_dir, name), stringsAsFactors = FALSE)
  for (f in factors) d[[f]] <- factor(d[[f]])
  d
}

cases <- list(
  ml_three = list(data = "ml_three.csv", factors = c("school", "klass"),
                  formula = "y ~ x * sector + tq + (x | school) + (x | school:klass)"),
  ml_four = list(data = "ml_four.csv", factors = c("district", "school", "klass"),
                 formula = paste("y ~ x + sector + tq + (x | district) + (x | district:school)",
                                 "+ (x | district:school:klass)")),
  ml_crossed = list(data = "ml_crossed.csv", factors = c("subj", "item"),
                    formula = "y ~ cond + w + (cond | subj) + (cond | item)"),
  ml_crossed_indep = list(data = "ml_crossed.csv", factors = c("subj", "item"),
                          formula = "y ~ cond + w + (cond || subj) + (1 | item)"),
  penicillin = list(data = "penicillin.csv", factors = c("plate", "sample"),
                    formula = "diameter ~ 1 + (1 | plate) + (1 | sample)"),
  pastes = list(data = "pastes.csv", factors = c("batch", "cask"),
                formula = "strength ~ 1 + (1 | batch) + (1 | batch:cask)"),
  oats = list(data = "oats.csv", factors = c("Block", "Variety"),
              formula = "yield ~ nitro + Variety + (1 | Block) + (1 | Block:Variety)"),
  machines = list(data = "machines.csv", factors = c("Worker", "Machine"),
                  formula = "score ~ Machine + (1 | Worker) + (1 | Worker:Machine)")
)

results <- list()
for (name in names(cases)) {
  cs <- cases[[name]]
  d <- read_case(cs$data, cs$factors)
  for (reml in c(FALSE, TRUE)) {
    r <- capture(lmer(as.formula(cs$formula), data = d, REML = reml))
    fit <- r$value
    th <- getME(fit, "theta")
    re <- ranef_json(fit)
    v <- as.matrix(vcov(fit))
    key <- paste0(name, if (reml) "_REML" else "_ML")
    tctrl <- lmerControl(optimizer = "nloptwrap",
                         optCtrl = list(ftol_abs = 1e-12, xtol_abs = 1e-10, ftol_rel = 1e-15,
                                        xtol_rel = 1e-12, maxeval = 1e5))
    tfit <- lmer(as.formula(cs$formula), data = d, REML = reml, control = tctrl)
    tight <- list(theta = as.list(getME(tfit, "theta")), logLik = as.numeric(logLik(tfit)),
                  deviance = if (reml) as.numeric(REMLcrit(tfit)) else as.numeric(deviance(tfit)),
                  fixef = as.list(fixef(tfit)), se = I(unname(sqrt(diag(as.matrix(vcov(tfit)))))),
                  feval = tfit@optinfo$feval)
    results[[key]] <- list(
      data = cs$data, formula = cs$formula, REML = reml,
      logLik = as.numeric(logLik(fit)),
      deviance = if (reml) as.numeric(REMLcrit(fit)) else as.numeric(deviance(fit)),
      nobs = nobs(fit), ngrps = as.list(ngrps(fit)),
      theta = as.list(th), theta_names = I(names(th)),
      fixef = as.list(fixef(fit)), fixef_names = I(names(fixef(fit))),
      vcov = unname(v), se = I(unname(sqrt(diag(v)))),
      sigma = sigma(fit), feval = fit@optinfo$feval,
      isSingular = isSingular(fit),
      warnings = I(r$warnings), messages = I(r$messages),
      conv_messages = I(as.character(fit@optinfo$conv$lme4$messages)),
      ranef = re$ranef, condvar = re$condvar, tight = tight,
      lme4_version = lme4_version, R_version = r_version)
    cat(key, ": logLik", format(as.numeric(logLik(fit)), digits = 12), " tight",
        format(tight$logLik, digits = 12), "\n")
  }
}
write_json_full(results, file.path(here, "multilevel_lme4.json"))
