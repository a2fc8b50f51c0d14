# lme4 references for sm_hlm.compare (model comparison) and the NELS
# cross-level validation (validation/nels_crosslevel.py).
#
# Run from the repository root:
#
#     Rscript validation/r/compare_lme4.R
#
# Writes validation/r/compare_lme4.json.  Reads ../shared/data/nels.csv.
#
# Contents (all numbers printed with %.17g, see common.R for why):
# * "anova": lme4 anova() tables, one object per comparison with
#   - "call": the R call, "refit": the refit argument,
#   - "messages"/"warnings": conditions raised by anova() (lme4 says
#     "refitting model(s) with ML (instead of REML)" when it refits),
#   - "models": row names in table order (sorted by npar, as lme4 does),
#   - "formulas": the formula of each row,
#   - "table": column -> list (npar, AIC, BIC, logLik, deviance, Chisq, Df,
#     Pr(>Chisq)), NA -> null,
#   - "mix_p" (boundary comparisons only): the 50:50 chi-bar-square p-value
#     0.5 * P(chi2_{Df-1} > Chisq) + 0.5 * P(chi2_{Df} > Chisq) per row
#     (null when the row is not a boundary test), computed here from lme4's
#     Chisq and Df.
#   Comparisons:
#     nels_ML          anova(fit.0, fit.1, fit.2), ML fits
#     nels_REML        anova(fit.0, fit.1, fit.2), REML fits (lme4 refits by ML)
#     nels_12_ML       anova(fit.1, fit.2), ML fits (the LRT of the notes)
#     slope_ML         anova(fit.1ri, fit.1), fit.1ri = mscore ~ ses + (1 | school), ML;
#                      boundary test of the random slope (Df 2, mixture of chi2_1 and chi2_2)
#     slope_REML_norefit  the same with REML fits and refit = FALSE
#     slope_REML_refit    the same with REML fits and the default refit = TRUE
#     lm_ML            anova(fit.0, lm.0), lm.0 = lm(mscore ~ 1): random intercept
#                      versus none (Df 1, mixture of chi2_0 and chi2_1)
# * "boxplot": per flp category (flp.school = tapply(flp, school, mean), the
#   school's flp) of the ML fit.2: n schools and quantile(type = 7) 0.25,
#   0.5, 0.75 of coef(fit.2)$school[, "(Intercept)"] (fixed intercept + BLUP)
#   and coef(fit.2)$school[, "ses"] (fixed ses slope + BLUP).

# Shared helpers (attaches lme4 and jsonlite; paths, %.17g JSON writer, data
# readers): common.R, next to this script.
local({
  arg <- grep("^--file=", commandArgs(trailingOnly = FALSE), value = TRUE)
  dir <- if (length(arg)) dirname(sub("^--file=", "", arg[1])) else "validation/r"
  source(file.path(dir, "common.R"))
})

# ------------------------------------------------------------------- helpers
mix_p <- function(chisq, df) {
  ifelse(is.na(df) | df < 1, NA,
         0.5 * pchisq(chisq, pmax(df - 1, 0), lower.tail = FALSE) +
           0.5 * pchisq(chisq, df, lower.tail = FALSE))
}

describe_anova <- function(res, call, refit, formulas, boundary = FALSE) {
  a <- res$value
  tab <- lapply(as.list(a), function(col) I(as.numeric(col)))
  out <- list(call = call, refit = refit, messages = I(res$messages),
              warnings = I(res$warnings), models = I(rownames(a)),
              formulas = I(unname(formulas[rownames(a)])), table = tab)
  if (boundary) out$mix_p <- I(mix_p(a[["Chisq"]], a[["Df"]]))
  out
}

fit_lmer <- function(f, data, REML) {
  r <- capture(lmer(f, data = data, REML = REML))
  if (length(r$warnings) || length(r$messages)) {
    cat("  lmer conditions:", r$warnings, r$messages, "\n")
  }
  r$value
}

# ---------------------------------------------------------------------- fits
nels <- read_nels()

forms <- c(
  nels_formulas,
  fit.1ri = "mscore ~ ses + (1 | school)",
  lm.0 = "mscore ~ 1"
)

fit.0 <- fit_lmer(as.formula(forms[["fit.0"]]), nels, FALSE)
fit.1 <- fit_lmer(as.formula(forms[["fit.1"]]), nels, FALSE)
fit.2 <- fit_lmer(as.formula(forms[["fit.2"]]), nels, FALSE)
fit.1ri <- fit_lmer(as.formula(forms[["fit.1ri"]]), nels, FALSE)
# lme4's anova() checks that the calls name the same data object: fit the lm
# through a function with the same argument name as fit_lmer
fit_lm <- function(f, data) lm(f, data = data)
lm.0 <- fit_lm(as.formula(forms[["lm.0"]]), nels)

anova_out <- list()
anova_out$nels_ML <- describe_anova(capture(anova(fit.0, fit.1, fit.2)),
                                    "anova(fit.0, fit.1, fit.2)", TRUE, forms)
anova_out$nels_12_ML <- describe_anova(capture(anova(fit.1, fit.2)),
                                       "anova(fit.1, fit.2)", TRUE, forms)
anova_out$slope_ML <- describe_anova(capture(anova(fit.1ri, fit.1)),
                                     "anova(fit.1ri, fit.1)", TRUE, forms, boundary = TRUE)
anova_out$lm_ML <- describe_anova(capture(anova(fit.0, lm.0)),
                                  "anova(fit.0, lm.0)", TRUE, forms, boundary = TRUE)

# REML fits: lme4's anova refits them by ML (refit = TRUE, the default)
local({
  fit.0 <- fit_lmer(as.formula(forms[["fit.0"]]), nels, TRUE)
  fit.1 <- fit_lmer(as.formula(forms[["fit.1"]]), nels, TRUE)
  fit.2 <- fit_lmer(as.formula(forms[["fit.2"]]), nels, TRUE)
  fit.1ri <- fit_lmer(as.formula(forms[["fit.1ri"]]), nels, TRUE)
  anova_out$nels_REML <<- describe_anova(capture(anova(fit.0, fit.1, fit.2)),
                                         "anova(fit.0, fit.1, fit.2) [REML fits]", TRUE, forms)
  anova_out$slope_REML_norefit <<- describe_anova(
    capture(anova(fit.1ri, fit.1, refit = FALSE)),
    "anova(fit.1ri, fit.1, refit = FALSE) [REML fits]", FALSE, forms, boundary = TRUE)
  anova_out$slope_REML_refit <<- describe_anova(
    capture(anova(fit.1ri, fit.1)),
    "anova(fit.1ri, fit.1) [REML fits]", TRUE, forms, boundary = TRUE)
})

for (k in names(anova_out)) {
  cat("==", k, ":", anova_out[[k]]$call, "\n")
  print(as.data.frame(lapply(anova_out[[k]]$table, unclass), check.names = FALSE,
                      row.names = anova_out[[k]]$models))
  if (!is.null(anova_out[[k]]$mix_p)) cat("   mixture p:", format(anova_out[[k]]$mix_p), "\n")
  for (m in c(anova_out[[k]]$messages, anova_out[[k]]$warnings)) cat("   ", m, "\n")
}

# ------------------------------------------------- the notes' boxplot data
cf <- coef(fit.2)$school
flp.school <- tapply(nels$flp, nels$school, mean)
stopifnot(identical(names(flp.school), rownames(cf)))
probs <- c(0.25, 0.5, 0.75)
cats <- sort(unique(as.vector(flp.school)))
boxplot <- lapply(unname(cats), function(v) {
  sel <- flp.school == v
  qi <- quantile(cf[sel, "(Intercept)"], probs, type = 7)
  qs <- quantile(cf[sel, "ses"], probs, type = 7)
  list(flp = v, n_schools = sum(sel),
       intercept = list(q25 = qi[[1]], median = qi[[2]], q75 = qi[[3]]),
       ses = list(q25 = qs[[1]], median = qs[[2]], q75 = qs[[3]]))
})
cat("== boxplot data (coef(fit.2) by flp.school)\n")
for (b in boxplot) cat(sprintf("  flp=%g n=%d intercept median=%.4f  ses median=%.4f\n",
                               b$flp, b$n_schools, b$intercept$median, b$ses$median))

out <- list(
  data = nels_path,
  formulas = as.list(forms),
  anova = anova_out,
  boxplot = boxplot,
  fit.2_ML_logLik = as.numeric(logLik(fit.2)),
  fit.2_ML_fixef = as.list(fixef(fit.2)),
  lme4_version = lme4_version,
  R_version = r_version
)
write_json_full(out, file.path(here, "compare_lme4.json"))
cat("wrote", file.path(here, "compare_lme4.json"), "\n")
