using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Serialization;
using SdFunctions.Inference.Pipeline;
using SdFunctions.Inference.Quality;
using SdFunctions.Inference.Runtime;
using SdFunctions.Inference.Schedulers;
using SdFunctions.Optimizer;

namespace SdFunctions.Cli;

public static partial class CliApp
{
    /// <summary>
    /// <c>sdf evaluate</c>: the same prompts × seeds through a reference and a candidate; per image and overall PSNR, SSIM and (for
    /// captions of the shapes grammar) the judge's verdicts; a table on stdout, a contact sheet PNG, optionally JSON.
    /// </summary>
    private static Command EvaluateCommand(TextWriter stdout, TextWriter stderr)
    {
        var model = ModelOption();
        model.Description = "The candidate bundle (diffusers ONNX layout). Default: $SDF_MODEL or the bundled tiny-shapes model.";
        var reference = new Option<string?>("--reference")
        {
            Description = "The reference bundle. Default: the candidate's source (an sdf optimize bundle records it), else the candidate itself with the --reference-* recipe.",
        };
        var prompts = new Option<string?>("--prompts") { Description = "Prompt file, one per line. Default: the 90 captions of the shapes grammar, which the judge can read." };
        var count = new Option<int>("--count") { Description = "Prompt × seed pairs: the prompts in turn, each with the next seed.", DefaultValueFactory = _ => 100 };
        var firstSeed = new Option<long>("--first-seed") { Description = "The first pair's seed.", DefaultValueFactory = _ => 1000 };
        var scheduler = new Option<string?>("--scheduler") { Description = $"The candidate's scheduler: {string.Join(", ", SchedulerCatalog.Names)}. Default: the bundle's." };
        var steps = new Option<int?>("--steps") { Description = "The candidate's steps. Default: the scheduler's." };
        var guidance = new Option<double?>("--guidance") { Description = $"Guidance for both. Default: {ShapesCaption.TrainedGuidance} with the shapes captions (what that model was trained for), else the model's." };
        var decoder = new Option<string?>("--decoder") { Description = "The candidate's decoder: full or tiny. Default: the bundle's." };
        var cacheInterval = new Option<int?>("--deep-cache-interval") { Description = "The candidate's DeepCache interval (a bundle made with optimize --deep-cache)." };
        var refScheduler = new Option<string?>("--reference-scheduler") { Description = "The reference's scheduler. Default: the candidate's." };
        var refSteps = new Option<int?>("--reference-steps") { Description = "The reference's steps. Default: the candidate's." };
        var refDecoder = new Option<string?>("--reference-decoder") { Description = "The reference's decoder. Default: the candidate's." };
        var sheet = new Option<string>("--sheet") { Description = "The contact sheet: reference | candidate per case, framed green (judged right), red (wrong) or grey.", DefaultValueFactory = _ => "evaluation.png" };
        var json = new Option<string?>("--json") { Description = "Also write every figure as JSON to this file." };
        var threads = new Option<int?>("--threads") { Description = "Intra-op threads. Default: physical cores." };
        var command = new Command("evaluate",
            "Measure picture quality: the same prompts × seeds through a reference and a candidate bundle or recipe; PSNR, SSIM and the shapes judge's accuracy.")
        {
            model, reference, prompts, count, firstSeed, scheduler, steps, guidance, decoder, cacheInterval, refScheduler, refSteps, refDecoder, sheet, json, threads,
        };
        command.SetAction(async (parse, ct) =>
        {
            string candidateDir = RequireModel(parse.GetValue(model)!);
            IReadOnlyList<string> promptList = parse.GetValue(prompts) is { } file ? ReadPrompts(file) : [.. ShapesCaption.All.Select(c => c.ToString())];
            if (parse.GetValue(count) is < 1 or > 10_000) throw new CliUsageException($"--count must be in 1–10000; got {parse.GetValue(count)}.");
            if (parse.GetValue(threads) is < 1) throw new CliUsageException("--threads must be at least 1.");
            var cases = EvaluationCase.Cycle(promptList, parse.GetValue(count), parse.GetValue(firstSeed));
            bool shapes = promptList.All(p => ShapesCaption.TryParse(p) is not null);

            var candidateRecipe = new GenerationRequest
            {
                Prompt = promptList[0], NegativePrompt = "", Scheduler = parse.GetValue(scheduler), Steps = parse.GetValue(steps),
                GuidanceScale = parse.GetValue(guidance) ?? (shapes ? ShapesCaption.TrainedGuidance : null), Decoder = parse.GetValue(decoder),
                CacheInterval = parse.GetValue(cacheInterval),
            };
            var referenceRecipe = candidateRecipe with
            {
                Scheduler = parse.GetValue(refScheduler) ?? candidateRecipe.Scheduler, Steps = parse.GetValue(refSteps) ?? candidateRecipe.Steps,
                Decoder = parse.GetValue(refDecoder) ?? candidateRecipe.Decoder, CacheInterval = null,
            };
            candidateRecipe.ValidateParameters();
            referenceRecipe.ValidateParameters();
            string referenceDir = parse.GetValue(reference) is { } r ? RequireModel(r)
                : OptimizeManifest.SourceOf(candidateDir) is { } source ? RequireModel(source)
                : referenceRecipe != candidateRecipe ? candidateDir
                : throw new CliUsageException($"--reference: {candidateDir} records no source bundle (it was not made by sdf optimize); name the bundle to compare with, or give a --reference-* recipe.");
            string sheetPath = RequireWritableFile("--sheet", parse.GetValue(sheet)!);
            string? jsonPath = parse.GetValue(json) is { } j ? RequireWritableFile("--json", j) : null;

            var options = new PipelineOptions { WarmUp = false, Session = new SessionSettings { IntraOpThreads = parse.GetValue(threads) } };
            using var candidatePipeline = await StableDiffusionPipeline.LoadAsync(candidateDir, options, cancellationToken: ct);
            using var separateReference = referenceDir == candidateDir ? null : await StableDiffusionPipeline.LoadAsync(referenceDir, options, cancellationToken: ct);
            var referencePipeline = separateReference ?? candidatePipeline;

            var (candidateRuns, referenceRuns) = (Recipe.Of(candidateDir, candidatePipeline, candidateRecipe), Recipe.Of(referenceDir, referencePipeline, referenceRecipe));
            stderr.WriteLine($"evaluate: {cases.Count} pairs; candidate {candidateRuns}; reference {referenceRuns}");
            var bar = ProgressBar.On(stderr);
            var images = await QualityEvaluator.RunAsync(new EvaluationSide(referencePipeline, referenceRecipe), new EvaluationSide(candidatePipeline, candidateRecipe), cases, bar, ct);
            bar.Finish();
            var summary = EvaluationSummary.Of(images);

            WriteTable(stdout, images, summary);
            await File.WriteAllBytesAsync(sheetPath, await ContactSheet.DrawAsync(images, candidatePipeline.Width, candidatePipeline.Height, ct), ct);
            stderr.WriteLine($"wrote {sheetPath} (reference left, candidate right)");
            if (jsonPath is not null)
            {
                var report = new EvaluationReport(candidateRuns, referenceRuns, summary, images);
                await File.WriteAllTextAsync(jsonPath, JsonSerializer.Serialize(report, EvaluationJson), ct);
                stderr.WriteLine($"wrote {jsonPath}");
            }
            return Ok;
        });
        return command;
    }

    /// <summary>What a side runs once the model's defaults fill what the options left out.</summary>
    private sealed record Recipe(string Bundle, string Scheduler, int Steps, double Guidance, string Decoder, int? CacheInterval)
    {
        public static Recipe Of(string dir, StableDiffusionPipeline pipeline, GenerationRequest request)
        {
            var d = pipeline.Profile.DefaultsFor(request.Scheduler);
            return new(dir, d.Scheduler, request.Steps ?? d.Steps, request.GuidanceScale ?? d.GuidanceScale, request.Decoder ?? pipeline.Profile.DefaultDecoder, request.CacheInterval);
        }

        public override string ToString() =>
            $"{Path.GetFileName(Bundle)} ({Scheduler} {Steps} steps, guidance {Guidance:0.##}, decoder {Decoder}{(CacheInterval is > 1 ? $", DeepCache every {CacheInterval}" : "")})";
    }

    private static IReadOnlyList<string> ReadPrompts(string path)
    {
        if (!File.Exists(path)) throw new CliUsageException($"--prompts: {path} does not exist.");
        var lines = File.ReadAllLines(path).Select(l => l.Trim()).Where(l => l.Length > 0).ToList();
        return lines.Count > 0 ? lines : throw new CliUsageException($"--prompts: {path} holds no prompt (one per line).");
    }

    /// <summary>Per image (all of them up to 20, else the 10 furthest from the reference) and overall.</summary>
    private static void WriteTable(TextWriter stdout, IReadOnlyList<EvaluatedImage> images, EvaluationSummary s)
    {
        var shown = images.Count <= 20 ? images : [.. images.OrderBy(i => i.Psnr).Take(10)];
        int width = Math.Min(48, shown.Max(i => i.Prompt.Length));
        stdout.WriteLine($"{"prompt".PadRight(width)}  {"seed",6}  {"PSNR dB",7}  {"SSIM",6}  {"reference",-24}  candidate");
        foreach (var i in shown)
            stdout.WriteLine($"{Cut(i.Prompt, width).PadRight(width)}  {i.Seed,6}  {Db(i.Psnr),7}  {i.Ssim,6:F4}  {Verdict(i.Reference, i.ReferenceRight),-24}  {Verdict(i.Candidate, i.CandidateRight)}");
        if (shown.Count < images.Count) stdout.WriteLine($"({shown.Count} furthest from the reference of {images.Count}; --json has every one)");
        stdout.WriteLine();
        stdout.WriteLine($"PSNR dB   mean {Db(s.Psnr.Mean)}  median {Db(s.Psnr.Median)}  p10 {Db(s.Psnr.P10)}  worst {Db(s.Psnr.Min)}  (identical: {s.Identical} of {s.Cases})");
        stdout.WriteLine($"SSIM      mean {s.Ssim.Mean:F4}  median {s.Ssim.Median:F4}  p10 {s.Ssim.P10:F4}  worst {s.Ssim.Min:F4}  (11×11 Gaussian window, R, G, B averaged)");
        if (s.Judged > 0)
            stdout.WriteLine($"judge     reference {s.ReferenceAccuracy}  candidate {s.CandidateAccuracy}  (lost {s.LostByCandidate}, gained {s.GainedByCandidate})");
        else
            stdout.WriteLine("judge     – (the prompts are not captions of the shapes grammar)");
    }

    private static string Db(double v) => double.IsPositiveInfinity(v) ? "∞" : v.ToString("F2");
    private static string Cut(string text, int width) => text.Length <= width ? text : text[..(width - 1)] + "…";

    private static string Verdict(ShapeVerdict? v, bool? right) => v is null ? "–" : right == true ? "right" : $"wrong: {v.Colour} {v.Kind} on {v.Background}";

    private sealed record EvaluationReport(Recipe Candidate, Recipe Reference, EvaluationSummary Summary, IReadOnlyList<EvaluatedImage> Images);

    private static readonly JsonSerializerOptions EvaluationJson = new(JsonSerializerDefaults.Web)
    {
        WriteIndented = true, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals, // ∞ dB for identical pictures
    };
}
