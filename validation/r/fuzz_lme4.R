# lme4 reference fits of the fuzz cases (validation/fuzz/cases.py).
#
# Run from the repository root:
#
#     python -m validation.fuzz.write_data      # CSVs + manifest in validation/r/fuzz_data/
#     Rscript validation/r/fuzz_lme4.R          # -> validation/r/fuzz_lme4.json
#
# (`Rscript validation/r/fuzz_lme4.R <from> <to>` fits only the manifest's
# cases <from>..<to>, for a quick look; the JSON is then not written.)
#
# For every case and REML in (FALSE, TRUE): `lmer(formula, data, REML)` with
# the default lmerControl() (nloptwrap BOBYQA), then refits with other
# optimizers ("bobyqa" from minqa, "Nelder_Mead" (only up to 5,000 rows and 3
# covariance parameters), "nlminbwrap", and nloptwrap BOBYQA with tight
# tolerances and up to 20,000 evaluations); the best log-likelihood among all
# of them is recorded as the best known value.
#
# One object per fit, key "<case>_ML" / "<case>_REML":
#   name, category, formula, REML, checksum (the manifest's, checked here
#   against R's own sums of the CSV's columns), nobs, ngrps
#   error: lme4's error message (the other fields of the default fit are then
#     absent), e.g. "number of observations (=200) <= number of random effects
#     (=200) ..."
#   logLik, crit (deviance(fit) for ML, REMLcrit(fit) for REML), theta (named
#   as getME(fit, "theta")), beta (fixef, named), sigma, isSingular
#   optimizer, feval, conv_code (fit@optinfo$conv$opt)
#   warnings, messages: conditions raised by lmer(); conv_messages:
#     fit@optinfo$conv$lme4$messages
#   warned: any warning, or a convergence message other than the singular-fit
#     one (i.e. lme4 did not converge cleanly)
#   time_s: elapsed seconds of the default fit
#   alt: one object per alternative optimizer: logLik, warned, error
#   best_logLik, best_optimizer ("default" or an alt name), best_theta
#
# Needs lme4 and jsonlite; produced with lme4 1.1.31 (R 4.2.2).  Took 17 minutes
# (1,031 s) on a shared 2-core machine: 85% in the alternative optimizers, half in
# those of the 20 slowest fits.

args <- commandArgs(trailingOnly = FALSE)
file_arg <- sub("^--file=", "", args[grep("^--file=", args)])
script_dir <- if (length(file_arg)) dirname(file_arg) else "validation/r"
source(file.path(script_dir, "common.R"))

fuzz_dir <- file.path(here, "fuzz_data")
manifest <- jsonlite::fromJSON(file.path(fuzz_dir, "manifest.json"), simplifyVector = FALSE)
range_args <- commandArgs(trailingOnly = TRUE)
sel <- if (length(range_args) == 2) seq(as.integer(range_args[1]), as.integer(range_args[2])) else
  seq_along(manifest)

alt_controls <- list(
  bobyqa = lmerControl(optimizer = "bobyqa"),
  Nelder_Mead = lmerControl(optimizer = "Nelder_Mead"),
  nlminbwrap = lmerControl(optimizer = "nlminbwrap"),
  nloptwrap_tight = lmerControl(optimizer = "nloptwrap",
                                optCtrl = list(ftol_abs = 1e-12, ftol_rel = 1e-15,
                                               xtol_abs = 1e-10, xtol_rel = 1e-12,
                                               maxeval = 2e4))
)

singular_msg <- "boundary \\(singular\\) fit"

# lmer with its conditions; list(error = msg) if it fails
try_lmer <- function(f, d, REML, control = lmerControl()) {
  t0 <- proc.time()[["elapsed"]]
  res <- tryCatch(capture(lmer(f, data = d, REML = REML, control = control)),
                  error = function(e) list(error = conditionMessage(e)))
  res$time <- proc.time()[["elapsed"]] - t0
  if (is.null(res$error)) {
    fit <- res$value
    res$conv_messages <- as.character(unlist(fit@optinfo$conv$lme4$messages))
    res$warned <- length(res$warnings) > 0 ||
      any(!grepl(singular_msg, res$conv_messages))
    res$logLik <- as.numeric(logLik(fit))
  }
  res
}

check_sums <- function(d, cs, name) {
  stopifnot(nrow(d) == cs$nrow, nlevels(d$g) == cs$ngroups)
  for (col in names(d)) {
    ref <- cs[[col]]
    if (is.numeric(d[[col]]) && col != "g") {
      s <- sum(d[[col]]); ss <- sum(d[[col]]^2)
      size <- max(abs(s), sqrt(ss))
      if (abs(s - ref[[1]]) > 1e-9 * size || abs(ss - ref[[2]]) > 1e-9 * abs(ss))
        stop(sprintf("case %s: column %s does not match the manifest's checksum", name, col))
    }
  }
}

out <- list()
t_all <- proc.time()[["elapsed"]]
for (i in sel) {
  cs <- manifest[[i]]
  d <- read.csv(file.path(fuzz_dir, cs$csv), stringsAsFactors = FALSE)
  d$g <- factor(d$g)
  if ("f" %in% names(d)) d$f <- factor(d$f)
  check_sums(d, cs$checksum, cs$name)
  f <- as.formula(cs$formula)
  for (REML in c(FALSE, TRUE)) {
    key <- paste0(cs$name, if (REML) "_REML" else "_ML")
    rec <- list(name = cs$name, category = cs$category, formula = cs$formula, REML = REML,
                checksum = cs$checksum, nobs = nrow(d), ngrps = nlevels(d$g))
    res <- try_lmer(f, d, REML)
    rec$time_s <- res$time
    if (!is.null(res$error)) {
      rec$error <- res$error
      out[[key]] <- rec
      cat(sprintf("%-40s ERROR %s\n", key, res$error))
      next
    }
    fit <- res$value
    rec$logLik <- res$logLik
    rec$crit <- if (REML) REMLcrit(fit) else deviance(fit)
    rec$theta <- getME(fit, "theta")
    rec$beta <- fixef(fit)
    rec$sigma <- sigma(fit)
    rec$isSingular <- isSingular(fit)
    rec$optimizer <- fit@optinfo$optimizer
    rec$feval <- fit@optinfo$feval
    rec$conv_code <- fit@optinfo$conv$opt
    rec$warnings <- I(res$warnings)
    rec$messages <- I(res$messages)
    rec$conv_messages <- I(res$conv_messages)
    rec$warned <- res$warned
    best <- list(logLik = res$logLik, optimizer = "default", theta = rec$theta)
    alt <- list()
    for (nm in names(alt_controls)) {
      # Nelder-Mead is slow with many rows or parameters (and in a trial run it improved
      # on the others only with at most 3 parameters): skip it there
      if (nm == "Nelder_Mead" && (nrow(d) > 5000 || length(rec$theta) > 3)) next
      a <- try_lmer(f, d, REML, alt_controls[[nm]])
      if (!is.null(a$error)) {
        alt[[nm]] <- list(error = a$error)
        next
      }
      alt[[nm]] <- list(logLik = a$logLik, warned = a$warned, time_s = a$time)
      if (a$logLik > best$logLik) {
        best <- list(logLik = a$logLik, optimizer = nm, theta = getME(a$value, "theta"))
      }
    }
    rec$alt <- alt
    rec$best_logLik <- best$logLik
    rec$best_optimizer <- best$optimizer
    rec$best_theta <- best$theta
    out[[key]] <- rec
    cat(sprintf("%-40s logLik=%.8f best=%+.2e (%s) warned=%s singular=%s %.1fs\n", key,
                rec$logLik, best$logLik - rec$logLik, best$optimizer, rec$warned,
                rec$isSingular, res$time))
  }
}
cat(sprintf("total %.0f s\n", proc.time()[["elapsed"]] - t_all))
if (length(range_args) != 2) {
  write_json_full(out, file.path(here, "fuzz_lme4.json"))
  cat("lme4", lme4_version, "\n")
}
