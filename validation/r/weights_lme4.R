# lme4 reference fits for sm_hlm's weights (issue 9).
#
# Run from the repository root (after `python -m validation.r.make_weights_data`):
#
#     Rscript validation/r/weights_lme4.R
#
# Writes validation/r/weights_lme4.json:
# * `precision`: lmer(..., weights = w) on data/weights_prec.csv, ML and REML,
#   random slope and random intercept: logLik, deviance (REMLcrit for REML),
#   fixef, vcov, theta, sigma, ranef (rows in factor-level order), fitted,
#   resid (response scale, residuals(fit)) and pearson
#   (residuals(fit, type = "pearson", scaled = TRUE) = sqrt(w) (y - mu) / sigma),
#   all in the data's row order.
# * `replicated`: plain ML fits of y ~ x + (x | group) on replicated versions
#   of data/weights_surv.csv: `level1` (each row written w1 times within its
#   group), `level2` (each group of w2 = 2 written once more as a new group,
#   id + 10000) and `both` (data/weights_surv_rep.csv).  Unscaled survey
#   weights (w1, w2) on weights_surv.csv must reproduce them exactly.

local({
  arg <- grep("^--file=", commandArgs(trailingOnly = FALSE), value = TRUE)
  dir <- if (length(arg)) dirname(sub("^--file=", "", arg[1])) else "validation/r"
  source(file.path(dir, "common.R"))
})

ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5))

summarise <- function(fit, full = TRUE) {
  re <- ranef(fit)$group
  out <- list(
    logLik = as.numeric(logLik(fit)),
    deviance = if (isREML(fit)) REMLcrit(fit) else deviance(fit),
    fixef = fixef(fit),
    vcov = as.matrix(vcov(fit)),
    theta = I(unname(getME(fit, "theta"))),
    sigma = sigma(fit),
    nobs = nobs(fit)
  )
  if (full) {
    out$ranef <- lapply(seq_len(nrow(re)), function(i)
      c(list(group = level_ids(rownames(re))[i]), as.list(re[i, , drop = FALSE])))
    out$fitted <- I(unname(fitted(fit)))
    out$resid <- I(unname(residuals(fit)))
    out$pearson <- I(unname(residuals(fit, type = "pearson", scaled = TRUE)))
  }
  out
}

prec <- read_sim("weights_prec.csv")
formulas <- c(slope = "y ~ x + z + (x | group)", intercept = "y ~ x + z + (1 | group)")
precision <- list()
for (nm in names(formulas)) {
  for (reml in c(FALSE, TRUE)) {
    fit <- lmer(as.formula(formulas[[nm]]), data = prec, weights = w, REML = reml,
                control = ctrl)
    precision[[paste0(nm, if (reml) "_reml" else "_ml")]] <-
      c(list(formula = formulas[[nm]], REML = reml), summarise(fit))
  }
}

surv <- read.csv(file.path(data_dir, "weights_surv.csv"))
rep1 <- surv[rep(seq_len(nrow(surv)), surv$w1), ]
extra <- surv[surv$w2 == 2, ]
extra$group <- extra$group + 10000
rep2 <- rbind(surv, extra)
both <- read.csv(file.path(data_dir, "weights_surv_rep.csv"))
replicated <- list()
for (nm in c("level1", "level2", "both")) {
  d <- switch(nm, level1 = rep1, level2 = rep2, both = both)
  d$group <- factor(d$group)
  fit <- lmer(y ~ x + (x | group), data = d, REML = FALSE, control = ctrl)
  replicated[[nm]] <- c(list(formula = "y ~ x + (x | group)", nrow = nrow(d)),
                        summarise(fit, full = FALSE))
}

write_json_full(list(lme4_version = lme4_version, r_version = r_version,
                     precision = precision, replicated = replicated),
                file.path(here, "weights_lme4.json"))
cat("wrote", file.path(here, "weights_lme4.json"), "\n")
