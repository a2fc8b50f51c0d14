# More lme4 reference fits with several grouping factors (issue 8, item 6), for
# tests/test_multilevel_refs.py.  Same fields as multilevel_lme4.R plus VarCorr.
#
# Run from the repository root (after `python -m validation.multilevel_data`,
# which writes the simulated data/ml_*.csv; about 1.5 minutes, most of it InstEval):
#
#     Rscript validation/r/multilevel_lme4_more.R
#
# Writes the classic data sets it fits to validation/r/data/ (grouping columns as
# text, 0/1 indicators as numbers so that the same formula works in R and Python):
#   egsingle.csv  mlmRev::egsingle  (7230 rows; childid is unique across schools)
#     schoolid, childid, year, math, size, female (1 = "Female"), black, hispanic,
#     retained (0/1)
#   scotssec.csv  mlmRev::ScotsSec  (3435 rows; 148 primary x 19 secondary schools)
#     attain, verbal, female (1 = sex "F"), primary, second
#   pixel.csv     nlme::Pixel       (102 rows) Dog, Side, day, pixel
#   insteval.csv  lme4::InstEval    (73421 rows, 1.2 MB) s, d, dept, service (0/1), y
# and fits them, and the simulated ml_three_unbal, ml_four_mixed, ml_crossed_nested
# (validation/multilevel_data.py), by ML and REML (InstEval: REML only).
#
# Writes validation/r/multilevel_lme4_more.json: one object per case, key
# "<case>_ML" / "<case>_REML", with fields
#   data, formula, REML, logLik, deviance (ML: deviance(fit); REML: REMLcrit(fit)),
#   nobs, ngrps (factor -> levels), theta (named, lme4's order: terms sorted by
#   decreasing number of levels), theta_names, fixef, fixef_names, vcov, se,
#   sigma, varcorr (list in VarCorr's order of {group, names, cov}; cov is the
#   covariance matrix of the term, sigma^2 Lambda Lambda'), feval, isSingular,
#   warnings, messages, conv_messages (lme4's convergence check), conv_code,
#   grad_scaled (lme4's scaled gradient at the optimum, solve(H, g), the quantity
#   behind "Model failed to converge with max|grad|"), elapsed (seconds),
#   ranef, condvar (as multilevel_lme4.R; not for InstEval),
#   tight: the same model refitted with tight optimizer tolerances (nloptwrap
#     BOBYQA, ftol_abs = 1e-12, xtol_abs = 1e-10, ftol_rel = 1e-15, xtol_rel =
#     1e-12, maxeval = 1e5) {theta, logLik, deviance, fixef, se, sigma, varcorr,
#     feval, conv_messages, ranef, condvar},
#   lme4_version, R_version.
# The main fits use lmerControl() defaults (BOBYQA through nloptwrap).

local({
  arg <- grep("^--file=", commandArgs(trailingOnly = FALSE), value = TRUE)
  dir <- if (length(arg)) dirname(sub("^--file=", "", arg[1])) else "validation/r"
  source(file.path(dir, "common.R"))
})
suppressPackageStartupMessages({
  library(nlme)
  library(mlmRev)
})

# ------------------------------------------------------------ classic data
write_classic <- function() {
  eg <- mlmRev::egsingle
  write.csv(data.frame(schoolid = as.character(eg$schoolid), childid = as.character(eg$childid),
                       year = eg$year, math = eg$math, size = eg$size,
                       female = as.integer(eg$female == "Female"),
                       black = as.integer(as.character(eg$black)),
                       hispanic = as.integer(as.character(eg$hispanic)),
                       retained = as.integer(as.character(eg$retained))),
            file.path(data_dir, "egsingle.csv"), row.names = FALSE)
  sc <- mlmRev::ScotsSec
  write.csv(data.frame(attain = sc$attain, verbal = sc$verbal,
                       female = as.integer(sc$sex == "F"),
                       primary = as.character(sc$primary), second = as.character(sc$second)),
            file.path(data_dir, "scotssec.csv"), row.names = FALSE)
  px <- as.data.frame(nlme::Pixel)
  write.csv(data.frame(Dog = as.character(px$Dog), Side = as.character(px$Side),
                       day = px$day, pixel = px$pixel),
            file.path(data_dir, "pixel.csv"), row.names = FALSE)
  ie <- lme4::InstEval
  write.csv(data.frame(s = as.integer(as.character(ie$s)), d = as.integer(as.character(ie$d)),
                       dept = as.integer(as.character(ie$dept)),
                       service = as.integer(as.character(ie$service)), y = ie$y),
            file.path(data_dir, "insteval.csv"), row.names = FALSE)
}
write_classic()

read_case <- function(name, factors) {
  d <- read.csv(file.path(data_dir, name), stringsAsFactors = FALSE)
  for (f in factors) d[[f]] <- factor(d[[f]])
  d
}

cases <- list(
  egsingle = list(data = "egsingle.csv", factors = c("schoolid", "childid"),
                  formula = paste("math ~ year * size + female + black + hispanic + retained",
                                  "+ (year | schoolid) + (year | schoolid:childid)")),
  scotssec = list(data = "scotssec.csv", factors = c("primary", "second"),
                  formula = "attain ~ verbal * female + (1 | primary) + (1 | second)"),
  pixel = list(data = "pixel.csv", factors = c("Dog", "Side"),
               formula = "pixel ~ day + I(day^2) + (day | Dog) + (1 | Side:Dog)"),
  insteval = list(data = "insteval.csv", factors = c("s", "d", "dept"), reml = TRUE,
                  ranef = FALSE, formula = "y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept)"),
  ml_three_unbal = list(data = "ml_three_unbal.csv", factors = c("school", "klass"),
                        formula = "y ~ x * sector + tq + (x | school) + (x | school:klass)"),
  ml_four_mixed = list(data = "ml_four_mixed.csv", factors = c("district", "school", "klass"),
                       formula = paste("y ~ x + sector + tq + (1 | district)",
                                       "+ (x || district:school) + (x | district:school:klass)")),
  ml_crossed_nested = list(data = "ml_crossed_nested.csv", factors = c("site", "subj", "item"),
                           formula = "y ~ cond + w + (cond | subj) + (cond | item) + (1 | site)")
)

varcorr_json <- function(fit) {
  vc <- VarCorr(fit)
  lapply(seq_along(vc), function(i) {
    m <- as.matrix(vc[[i]])
    attributes(m) <- attributes(m)[c("dim", "dimnames")]
    list(group = names(vc)[i], names = I(colnames(m)), cov = unname(m))
  })
}

grad_scaled <- function(fit) {
  dv <- fit@optinfo$derivs
  if (is.null(dv)) return(NULL)
  g <- tryCatch(solve(dv$Hessian, dv$gradient), error = function(e) dv$gradient)
  I(unname(as.numeric(g)))
}

tctrl <- lmerControl(optimizer = "nloptwrap",
                     optCtrl = list(ftol_abs = 1e-12, xtol_abs = 1e-10, ftol_rel = 1e-15,
                                    xtol_rel = 1e-12, maxeval = 1e5))

results <- list()
for (name in names(cases)) {
  cs <- cases[[name]]
  d <- read_case(cs$data, cs$factors)
  remls <- if (is.null(cs$reml)) c(FALSE, TRUE) else cs$reml
  with_ranef <- is.null(cs$ranef) || cs$ranef
  for (reml in remls) {
    t0 <- proc.time()[["elapsed"]]
    r <- capture(lmer(as.formula(cs$formula), data = d, REML = reml))
    elapsed <- proc.time()[["elapsed"]] - t0
    fit <- r$value
    th <- getME(fit, "theta")
    v <- as.matrix(vcov(fit))
    key <- paste0(name, if (reml) "_REML" else "_ML")
    rt <- capture(lmer(as.formula(cs$formula), data = d, REML = reml, control = tctrl))
    tfit <- rt$value
    tight <- list(theta = as.list(getME(tfit, "theta")), logLik = as.numeric(logLik(tfit)),
                  deviance = if (reml) as.numeric(REMLcrit(tfit)) else as.numeric(deviance(tfit)),
                  fixef = as.list(fixef(tfit)), se = I(unname(sqrt(diag(as.matrix(vcov(tfit)))))),
                  sigma = sigma(tfit), varcorr = varcorr_json(tfit),
                  feval = tfit@optinfo$feval, warnings = I(rt$warnings),
                  conv_messages = I(as.character(tfit@optinfo$conv$lme4$messages)))
    out <- list(
      data = cs$data, formula = cs$formula, REML = reml,
      logLik = as.numeric(logLik(fit)),
      deviance = if (reml) as.numeric(REMLcrit(fit)) else as.numeric(deviance(fit)),
      nobs = nobs(fit), ngrps = as.list(ngrps(fit)),
      theta = as.list(th), theta_names = I(names(th)),
      fixef = as.list(fixef(fit)), fixef_names = I(names(fixef(fit))),
      vcov = unname(v), se = I(unname(sqrt(diag(v)))),
      sigma = sigma(fit), varcorr = varcorr_json(fit), feval = fit@optinfo$feval,
      isSingular = isSingular(fit),
      warnings = I(r$warnings), messages = I(r$messages),
      conv_messages = I(as.character(fit@optinfo$conv$lme4$messages)),
      conv_code = if (is.null(fit@optinfo$conv$lme4$code)) 0L else fit@optinfo$conv$lme4$code,
      grad_scaled = grad_scaled(fit), elapsed = elapsed)
    if (with_ranef) {
      re <- ranef_json(fit)
      out$ranef <- re$ranef
      out$condvar <- re$condvar
      tre <- ranef_json(tfit)
      tight$ranef <- tre$ranef
      tight$condvar <- tre$condvar
    }
    out$tight <- tight
    out$lme4_version <- lme4_version
    out$R_version <- r_version
    results[[key]] <- out
    cat(key, ": logLik", format(out$logLik, digits = 12), " tight",
        format(tight$logLik, digits = 12), " ", round(elapsed, 1), "s",
        paste(out$conv_messages, collapse = "; "), "\n")
  }
}
write_json_full(results, file.path(here, "multilevel_lme4_more.json"))
