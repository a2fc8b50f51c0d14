# Inference references for fits with several grouping factors (issue 8, item 3),
# for tests/test_multilevel_inference.py.
#
# Run from the repository root (after validation/r/multilevel_lme4.R, which
# writes the data sets it reads):
#
#     Rscript validation/r/multilevel_inference_refs.R
#
# Writes validation/r/multilevel_inference_refs.json: one object per case
# "<case>_ML" / "<case>_REML" with fields
#   data, formula, REML, theta (lme4's order), sigma,
#   satterthwaite: lmerTest summary(fit)$coefficients as {names, Estimate,
#     Std. Error, df, t value, Pr(>|t|)},
#   cr (nested cases only): for CR0, CR1, CR2 clubSandwich::vcovCR(fit, type)
#     (clusters: the outermost factor) and coef_test(fit, vcov, test =
#     "Satterthwaite") {vcov (rows), SE, tstat, df, p},
#   profile (REML cases): confint(fit, method = "profile") {names, lower, upper}
# and "anova": lme4's anova of (1 | outer) against (1 | outer) + (1 | outer:inner)
# on pastes and ml_three (ML refits): {Chisq, Df, p, logLik};
# "cr_district": vcovCR / coef_test (CR2) of ml_three by REML clustered on
# district = school %/% 3, a data column coarser than the outermost factor.

local({
  arg <- grep("^--file=", commandArgs(trailingOnly = FALSE), value = TRUE)
  dir <- if (length(arg)) dirname(sub("^--file=", "", arg[1])) else "validation/r"
  source(file.path(dir, "common.R"))
})
suppressPackageStartupMessages({
  library(lmerTest)
  library(clubSandwich)
})

read_case <- function(name, factors) {
  d <- read.csv(file.path(data_dir, name), stringsAsFactors = FALSE)
  for (f in factors) d[[f]] <- factor(d[[f]])
  d
}

cases <- list(
  ml_three = list(data = "ml_three.csv", factors = c("school", "klass"), outer = "school",
                  formula = "y ~ x * sector + tq + (x | school) + (x | school:klass)"),
  ml_crossed = list(data = "ml_crossed.csv", factors = c("subj", "item"), outer = NULL,
                    formula = "y ~ cond + w + (cond | subj) + (cond | item)"),
  penicillin = list(data = "penicillin.csv", factors = c("plate", "sample"), outer = NULL,
                    formula = "diameter ~ 1 + (1 | plate) + (1 | sample)"),
  pastes = list(data = "pastes.csv", factors = c("batch", "cask"), outer = "batch",
                formula = "strength ~ 1 + (1 | batch) + (1 | batch:cask)"),
  oats = list(data = "oats.csv", factors = c("Block", "Variety"), outer = "Block",
              formula = "yield ~ nitro + Variety + (1 | Block) + (1 | Block:Variety)"),
  machines = list(data = "machines.csv", factors = c("Worker", "Machine"), outer = "Worker",
                  formula = "score ~ Machine + (1 | Worker) + (1 | Worker:Machine)")
)

coef_list <- function(cf) {
  list(names = I(rownames(cf)), Estimate = I(unname(cf[, "Estimate"])),
       SE = I(unname(cf[, "Std. Error"])), df = I(unname(cf[, "df"])),
       t = I(unname(cf[, "t value"])), p = I(unname(cf[, "Pr(>|t|)"])))
}

results <- list()
for (name in names(cases)) {
  cs <- cases[[name]]
  d <- read_case(cs$data, cs$factors)
  for (reml in c(FALSE, TRUE)) {
    key <- paste0(name, if (reml) "_REML" else "_ML")
    fit <- lmerTest::lmer(as.formula(cs$formula), data = d, REML = reml)
    out <- list(data = cs$data, formula = cs$formula, REML = reml,
                theta = I(unname(getME(fit, "theta"))),
                theta_names = I(names(getME(fit, "theta"))), sigma = sigma(fit),
                satterthwaite = coef_list(summary(fit)$coefficients))
    if (!is.null(cs$outer)) {
      cr <- list()
      for (type in c("CR0", "CR1", "CR2")) {
        V <- vcovCR(as(fit, "lmerMod"), type = type)
        ct <- coef_test(as(fit, "lmerMod"), vcov = V, test = "Satterthwaite")
        cr[[type]] <- list(vcov = unname(as.matrix(V)), SE = I(ct$SE), tstat = I(ct$tstat),
                           df = I(ct$df_Satt), p = I(ct$p_Satt),
                           cluster = cs$outer)
      }
      out$cr <- cr
    }
    if (reml && name %in% c("pastes", "penicillin", "oats", "machines")) {
      ci <- confint(as(fit, "lmerMod"), method = "profile", oldNames = TRUE)
      out$profile <- list(names = I(rownames(ci)), lower = I(unname(ci[, 1])),
                          upper = I(unname(ci[, 2])))
    }
    results[[key]] <- out
    cat(key, "\n")
  }
}

anova_case <- function(name, f0, f1) {
  cs <- cases[[name]]
  d <- read_case(cs$data, cs$factors)
  m0 <- lme4::lmer(as.formula(f0), data = d, REML = FALSE)
  m1 <- lme4::lmer(as.formula(f1), data = d, REML = FALSE)
  a <- anova(m0, m1)
  list(data = cs$data, formula0 = f0, formula1 = f1,
       logLik = I(unname(a$logLik)), Chisq = a$Chisq[2], Df = a$Df[2],
       p = a[["Pr(>Chisq)"]][2], npar = I(unname(a$npar)))
}
results$anova_pastes <- anova_case("pastes", "strength ~ 1 + (1 | batch)",
                                   "strength ~ 1 + (1 | batch) + (1 | batch:cask)")
results$anova_ml_three <- anova_case("ml_three", "y ~ x * sector + tq + (x | school)",
                                     "y ~ x * sector + tq + (x | school) + (1 | school:klass)")
# clusters coarser than the outermost factor (a data column): ml_three by REML,
# district = school %/% 3
local({
  cs <- cases$ml_three
  d <- read_case(cs$data, cs$factors)
  district <- as.integer(as.character(d$school)) %/% 3
  fit <- lme4::lmer(as.formula(cs$formula), data = d, REML = TRUE)
  V <- vcovCR(fit, cluster = district, type = "CR2")
  ct <- coef_test(fit, vcov = V, test = "Satterthwaite")
  results$cr_district <<- list(data = cs$data, formula = cs$formula, REML = TRUE,
                               theta = I(unname(getME(fit, "theta"))),
                               names = I(rownames(summary(fit)$coefficients)),
                               vcov = unname(as.matrix(V)), SE = I(ct$SE),
                               tstat = I(ct$tstat), df = I(ct$df_Satt))
})
results$lmerTest_version <- as.character(packageVersion("lmerTest"))
results$clubSandwich_version <- as.character(packageVersion("clubSandwich"))
results$lme4_version <- lme4_version
results$R_version <- r_version
write_json_full(results, file.path(here, "multilevel_inference_refs.json"))
