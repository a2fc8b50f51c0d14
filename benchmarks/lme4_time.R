# Time lme4::lmer on a CSV: Rscript benchmarks/lme4_time.R data.csv "formula" group_col reps
# Prints one JSON object: the elapsed seconds of each run (model frame + fit, REML = FALSE).
args <- commandArgs(trailingOnly = TRUE)
suppressPackageStartupMessages(library(lme4))
d <- read.csv(args[1])
d[[args[3]]] <- factor(d[[args[3]]])
f <- as.formula(args[2])
reps <- as.integer(args[4])
times <- numeric(reps)
for (i in seq_len(reps)) {
  times[i] <- system.time(fit <- lmer(f, data = d, REML = FALSE))[["elapsed"]]
}
cat(sprintf('{"times": [%s], "logLik": %.10f, "lme4": "%s"}\n',
            paste(sprintf("%.6f", times), collapse = ", "), as.numeric(logLik(fit)),
            as.character(packageVersion("lme4"))))
