# Inference references for sm_hlm.inference (Satterthwaite, profile CIs,
# cluster-robust covariances).
#
# Run from the repository root:
#
#     Rscript validation/r/inference_refs.R
#
# Writes validation/r/inference_refs.json.  Tests (tests/test_inference.py)
# read the JSON; R is not needed at test time.
#
# Needs R with lme4, lmerTest, clubSandwich and jsonlite (Debian bookworm:
# apt-get install r-cran-lme4 r-cran-lmertest r-cran-clubsandwich
# r-cran-jsonlite).  The data are ../shared/data/nels.csv with `school` as a
# factor.
#
# Cases (keys "<fit>_<ML|REML>"), each fitted with lmerTest::lmer:
#   fit.1: mscore ~ ses + (ses | school)
#   fit.2: mscore ~ flp + ses + flp * ses + (ses | school)
#
# Fields of each case:
# * formula, REML, nobs, fixef_names, fixef, theta, sigma
# * coefficients: summary(fit)$coefficients (lmerTest, Satterthwaite df) as
#   columns {"names", "Estimate", "Std. Error", "df", "t value", "Pr(>|t|)"}
# * vcov_varpar: lmerTest's asymptotic covariance of (theta, sigma)
#   (2 * inverse Hessian of the deviance / REML criterion)
# * contest: lmerTest::contest() results for a few contrasts:
#   list of {"L": rows, "type": "t" | "F", and the table's columns}
# * confint_profile: confint(fit, method = "profile") with lme4's old names
#   (.sig01, .sig02, .sig03, .sigma, fixed effects) as {"names", "lower",
#   "upper"}; "names_new" holds the oldNames = FALSE names (sd_(Intercept)|school,
#   cor_ses.(Intercept)|school, sd_ses|school, sigma, ...) in the same order.
#   NB: lme4's profile() always refits by ML (devfun2 calls refitML), so the
#   REML and ML cases give the same intervals.
# * confint_time_s: elapsed seconds of the profile computation
# * confint_warnings: {message: count} of the warnings raised by confint().
#   With lme4 1.1-31 the correlation .sig02 gets "bad spline fit for .sig02:
#   falling back to linear interpolation" (and "non-monotonic profile"), so
#   lme4's correlation limits are linear interpolations between its coarse
#   profile points, off by up to ~6e-4 from the exact roots of the profile
#   (sm_hlm root-finds; tests compare correlations with an absolute 1e-3).
# * vcovCR: clubSandwich::vcovCR(fit, cluster = nels$school, type = ...) for
#   CR0, CR1 and CR2 (matrices ordered as fixef_names)
# * versions: lme4, lmerTest, clubSandwich, R
#
# Numbers are printed with %.17g (see common.R for why not jsonlite).

# Shared helpers (attaches lme4 and jsonlite; paths, %.17g JSON writer, data
# readers): common.R, next to this script.
local({
  arg <- grep("^--file=", commandArgs(trailingOnly = FALSE), value = TRUE)
  dir <- if (length(arg)) dirname(sub("^--file=", "", arg[1])) else "validation/r"
  source(file.path(dir, "common.R"))
})
suppressPackageStartupMessages({
  library(lmerTest)       # after lme4 (attached by common.R), as before
  library(clubSandwich)
})

# ------------------------------------------------------------------- fits
nels <- read_nels()

cases <- list(
  list(name = "fit.1", formula = "mscore ~ ses + (ses | school)",
       contrasts = list(matrix(c(1, 1), nrow = 1))),
  list(name = "fit.2", formula = "mscore ~ flp + ses + flp*ses + (ses | school)",
       contrasts = list(matrix(c(0, 1, 0, 0, 0, 0, 0, 1), nrow = 2, byrow = TRUE),
                        matrix(c(0, 1, 1, 0), nrow = 1),
                        matrix(c(0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1), nrow = 3,
                               byrow = TRUE)))
)

columns_of <- function(tab) {
  out <- list(names = I(rownames(tab)))
  for (cn in colnames(tab)) out[[cn]] <- I(unname(tab[, cn]))
  out
}

out <- list()
for (cs in cases) {
  for (REML in c(FALSE, TRUE)) {
    key <- paste0(cs$name, "_", if (REML) "REML" else "ML")
    cat("fitting", key, "\n")
    fit <- lmerTest::lmer(as.formula(cs$formula), data = nels, REML = REML)
    coefs <- summary(fit)$coefficients
    contests <- lapply(cs$contrasts, function(L) {
      tab <- if (nrow(L) == 1) contest(fit, L, joint = FALSE) else contest(fit, L, joint = TRUE)
      tab <- as.data.frame(tab)
      res <- list(L = L, type = if (nrow(L) == 1) "t" else "F")
      for (cn in names(tab)) res[[cn]] <- tab[[cn]][1]
      res
    })
    t0 <- proc.time()[["elapsed"]]
    ci_res <- capture(suppressMessages(confint(fit, method = "profile", oldNames = TRUE)))
    ci <- ci_res$value
    ci_warn <- ci_res$warnings
    ci_time <- proc.time()[["elapsed"]] - t0
    ci_new <- suppressWarnings(suppressMessages(
      confint(fit, method = "profile", oldNames = FALSE)))
    warn_tab <- table(ci_warn)
    vc <- lapply(c(CR0 = "CR0", CR1 = "CR1", CR2 = "CR2"), function(tp)
      unclass(as.matrix(vcovCR(fit, cluster = nels$school, type = tp))))
    vc <- lapply(vc, function(m) { attributes(m) <- list(dim = dim(m)); m })
    out[[key]] <- list(
      formula = cs$formula,
      REML = REML,
      nobs = nobs(fit),
      fixef_names = I(names(fixef(fit))),
      fixef = fixef(fit),
      theta = I(unname(getME(fit, "theta"))),
      sigma = sigma(fit),
      coefficients = columns_of(coefs),
      vcov_varpar = unclass(fit@vcov_varpar),
      contest = contests,
      confint_profile = list(names = I(rownames(ci)), names_new = I(rownames(ci_new)),
                             lower = I(unname(ci[, 1])), upper = I(unname(ci[, 2]))),
      confint_time_s = ci_time,
      confint_warnings = if (length(warn_tab)) as.list(setNames(as.integer(warn_tab),
                                                                names(warn_tab))) else NULL,
      vcovCR = vc
    )
  }
}
out$versions <- list(lme4 = lme4_version,
                     lmerTest = as.character(packageVersion("lmerTest")),
                     clubSandwich = as.character(packageVersion("clubSandwich")),
                     R = r_version)

path <- file.path(here, "inference_refs.json")
write_json_full(out, path)
cat("wrote", path, "\n")
