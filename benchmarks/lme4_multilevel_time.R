# Time lme4::lmer on a CSV with several grouping factors:
#   Rscript benchmarks/lme4_multilevel_time.R data.csv "formula" REML factor1,factor2 reps
# The factor columns become factors; prints one JSON object: elapsed seconds of each
# run (model frame + fit), logLik, the deviance (REMLcrit for REML), theta, feval,
# the fixed effects, warnings and the lme4 version.
args <- commandArgs(trailingOnly = TRUE)
suppressPackageStartupMessages(library(lme4))
d <- read.csv(args[1])
for (f in strsplit(args[4], ",")[[1]]) d[[f]] <- factor(d[[f]])
f <- as.formula(args[2])
reml <- as.logical(args[3])
reps <- as.integer(args[5])
times <- numeric(reps)
warns <- character(0)
for (i in seq_len(reps)) {
  times[i] <- system.time(fit <- withCallingHandlers(lmer(f, data = d, REML = reml),
    warning = function(w) { warns <<- c(warns, conditionMessage(w)); invokeRestart("muffleWarning") },
    message = function(m) { warns <<- c(warns, conditionMessage(m)); invokeRestart("muffleMessage") }
  ))[["elapsed"]]
}
num <- function(x) paste(sprintf("%.17g", x), collapse = ", ")
str <- function(x) paste(vapply(x, function(s) as.character(jsonlite::toJSON(s, auto_unbox = TRUE)), ""),
                         collapse = ", ")
dev <- if (reml) REMLcrit(fit) else deviance(fit)
cat(sprintf(paste0('{"times": [%s], "logLik": %.17g, "deviance": %.17g, "theta": [%s], ',
                   '"fixef": [%s], "fixef_names": [%s], "feval": %d, "warnings": [%s], ',
                   '"lme4": "%s"}\n'),
            num(times), as.numeric(logLik(fit)), dev, num(getME(fit, "theta")),
            num(fixef(fit)), str(names(fixef(fit))), as.integer(fit@optinfo$feval),
            str(unique(gsub("\n", " ", warns))), as.character(packageVersion("lme4"))))
