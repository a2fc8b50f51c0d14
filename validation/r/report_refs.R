# lme4/lmerTest references for sm_hlm's reporting and toolbox functions
# (tests/test_report.py, tests/test_toolbox.py).
#
# Run from the repository root:
#
#     Rscript validation/r/report_refs.R
#
# Writes validation/r/report_refs.json.  Reads ../shared/data/nels.csv.
#
# Contents (numbers printed with %.17g, see common.R):
# * "abbreviate": R's abbreviate() of the labels in "names" with minlength 6
#   ("min6") and 11 ("min11"), as lme4 abbreviates the correlation of the
#   fixed effects.
# * "drop1": one object per case, lme4's drop1(fit, test = "Chisq") with
#   - "formula", "REML" (how the full model was fitted; lme4 refits REML fits
#     by ML inside extractAIC), "theta" (getME(fit, "theta")), "logLik",
#   - "rows": row names ("<none>" then the droppable terms, R's drop.scope),
#   - "npar", "AIC", "LRT", "p" (lists, NA -> null).
#   Cases (NELS, school and urbanicity as factors, urban the reference):
#     nels_ML    mscore ~ flp * ses + urbanicity + public + (ses | school), ML
#     nels_REML  the same model fitted by REML
# * "drop1_F": lmerTest's drop1(fit) (Satterthwaite F tests of the marginal
#   terms) for the same two fits: "theta", "logLik" (of the lmerTest fit),
#   "rows", "SumSq", "MeanSq", "NumDF", "DenDF", "F", "p".
# * "ranef_condvar": the NELS fit nels_REML's ranef(condVar = TRUE) for the
#   schools in "schools": "ranef" (rows: school, (Intercept), ses), "condsd"
#   (sqrt of the diagonal of each school's postVar), "condcov" (the 2x2
#   postVar of each school), at the theta of drop1$nels_REML.
#
# Warnings at generation time: one, "Model failed to converge with max|grad| =
# 0.00301623 (tol = 0.002, component 1)", from the REML fit (sm_hlm's REML
# optimum has a higher log-likelihood; tests compare at lme4's theta).

local({
  arg <- grep("^--file=", commandArgs(trailingOnly = FALSE), value = TRUE)
  dir <- if (length(arg)) dirname(sub("^--file=", "", arg[1])) else "validation/r"
  source(file.path(dir, "common.R"))
})
suppressPackageStartupMessages(library(lmerTest))

out <- list(lme4_version = lme4_version, lmerTest_version =
              as.character(packageVersion("lmerTest")), R_version = r_version)

names_ab <- c("Intercept", "(Intercept)", "C(urbanicity, Treatment('urban'))[T.rural]",
              "C(urbanicity, Treatment('urban'))[T.suburban]", "flp", "ses", "flp:ses",
              "mscore_centered_by_school_mean", "poly(age, 2)1", "poly(age, 2)2",
              "a very long variable name", "urbanicity[T.suburban]:public")
out$abbreviate <- list(names = I(names_ab), min6 = I(unname(abbreviate(names_ab, 6))),
                       min11 = I(unname(abbreviate(names_ab, 11))))

d <- read_nels()
d$urbanicity <- relevel(factor(d$urbanicity), ref = "urban")
form <- mscore ~ flp * ses + urbanicity + public + (ses | school)

d1 <- list()
dF <- list()
for (reml in c(FALSE, TRUE)) {
  key <- if (reml) "nels_REML" else "nels_ML"
  fit <- lme4::lmer(form, data = d, REML = reml)
  a <- drop1(fit, test = "Chisq")
  d1[[key]] <- list(formula = deparse(form), REML = reml, theta = I(unname(getME(fit, "theta"))),
                    logLik = as.numeric(logLik(fit)), rows = I(rownames(a)),
                    npar = I(as.numeric(a$npar)), AIC = I(as.numeric(a$AIC)),
                    LRT = I(as.numeric(a$LRT)), p = I(as.numeric(a[["Pr(Chi)"]])))
  fitT <- lmerTest::lmer(form, data = d, REML = reml)
  f <- lmerTest:::drop1.lmerModLmerTest(fitT)
  dF[[key]] <- list(formula = deparse(form), REML = reml,
                    theta = I(unname(getME(fitT, "theta"))),
                    logLik = as.numeric(logLik(fitT)), rows = I(rownames(f)),
                    SumSq = I(f[["Sum Sq"]]), MeanSq = I(f[["Mean Sq"]]),
                    NumDF = I(as.numeric(f$NumDF)), DenDF = I(f$DenDF),
                    F = I(f[["F value"]]), p = I(f[["Pr(>F)"]]))
  if (reml) {
    re <- ranef(fit, condVar = TRUE)$school
    pv <- attr(re, "postVar")
    take <- c(1, 2, 3, 50, 684)
    out$ranef_condvar <- list(
      schools = I(level_ids(rownames(re))[take]),
      ranef = lapply(take, function(i) list(school = level_ids(rownames(re))[i],
                                            Intercept = re[i, 1], ses = re[i, 2])),
      condsd = lapply(take, function(i) I(sqrt(diag(pv[, , i])))),
      condcov = lapply(take, function(i) pv[, , i]))
  }
}
out$drop1 <- d1
out$drop1_F <- dF
write_json_full(out, file.path(here, "report_refs.json"))
cat("wrote", file.path(here, "report_refs.json"), "\n")
