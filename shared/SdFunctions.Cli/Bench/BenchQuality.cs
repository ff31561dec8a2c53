using System.Text.Json;
using SdFunctions.Inference.Bundle;
using SdFunctions.Inference.Pipeline;
using SdFunctions.Inference.Quality;
using SdFunctions.Optimizer;
using SdFunctions.Optimizer.Quantization;

namespace SdFunctions.Cli.Bench;

/// <summary>
/// What a row's speed costs in the picture, measured on the trained tiny-shapes model: the row's optimizer recipe applied to it
/// (calibrated as <c>sdf optimize</c> ships it: the card's prompts and steps) and the row's scheduler, steps, decoder and
/// DeepCache interval, against FP32 tiny-shapes with the same recipe (no DeepCache), over caption × seed pairs.
/// </summary>
/// <param name="Recipe">What both sides ran, e.g. "dpmpp-2m 20 steps, guidance 3, full decoder".</param>
public sealed record QualityFigures(string Recipe, int Pairs, Accuracy Fp32, Accuracy Candidate, double PsnrMedian, double SsimMean)
{
    /// <summary>Judge accuracy points lost against FP32 (negative: gained).</summary>
    public double PointsLost => (Fp32.Share - Candidate.Share) * 100;
}

/// <summary>
/// Measures <see cref="QualityFigures"/> for the bench's rows; the optimized tiny-shapes variants are made once under the work folder. The
/// few-step rows run on <paramref name="fewStepBundle"/>, tiny-shapes distilled into an LCM (with the bundled model's trained TAESD and card).
/// </summary>
public sealed class BenchQuality(string shapesBundle, string? fewStepBundle, string work, int pairs, IProgress<string> progress)
{
    /// <summary>The trained model's guidance: at the rows' own 7.5 its multistep solvers fall apart, FP32 included.</summary>
    public const double Guidance = ShapesCaption.TrainedGuidance;

    /// <summary>The recipe the variant rows are judged with: the 20-step DPM++ run their UNet step is timed in.</summary>
    public static GenerationRequest VariantRecipe => new() { Prompt = "", Scheduler = "dpmpp-2m", Steps = 20, GuidanceScale = Guidance };

    public Task<QualityFigures> ForVariantAsync(BenchVariant variant, CancellationToken ct) => MeasureAsync(shapesBundle, variant, VariantRecipe, ct);

    /// <summary>A time-to-image row (at a DeepCache interval); the few-step rows on the LCM model, null when there is none.</summary>
    public async Task<QualityFigures?> ForImageAsync(ImageRow row, int interval, CancellationToken ct)
    {
        var recipe = new GenerationRequest
        {
            Prompt = "", Scheduler = row.Scheduler, Steps = row.Steps, GuidanceScale = Guidance, Decoder = row.Decoder, CacheInterval = interval > 1 ? interval : null,
        };
        if (row.Variant != BenchVariant.FewStep.Name) return await MeasureAsync(shapesBundle, BenchVariant.All.Single(v => v.Name == row.Variant), recipe, ct);
        return await FewStepSourceAsync(ct) is { } lcm ? await MeasureAsync(lcm, BenchVariant.FewStep, recipe, ct) : null;
    }

    /// <summary>tiny-shapes-lcm with the bundled model's trained tiny decoder and card (its prompts to calibrate on), made once.</summary>
    private async Task<string?> FewStepSourceAsync(CancellationToken ct)
    {
        if (fewStepBundle is null || !Directory.Exists(fewStepBundle))
        {
            progress.Report($"quality: no trained LCM model at {fewStepBundle}: the few-step rows get none");
            return null;
        }
        string dir = Path.Combine(work, "quality", "tiny-shapes-lcm");
        if (File.Exists(Path.Combine(dir, ModelCard.FileName))) return dir;
        if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
        CopyFolder(fewStepBundle, dir);
        CopyFolder(Path.Combine(shapesBundle, ModelBundle.TinyDecoderFolder), Path.Combine(dir, ModelBundle.TinyDecoderFolder));
        await File.WriteAllBytesAsync(Path.Combine(dir, ModelCard.FileName), await File.ReadAllBytesAsync(Path.Combine(shapesBundle, ModelCard.FileName), ct), ct);
        return dir;
    }

    private static void CopyFolder(string source, string target)
    {
        foreach (string file in Directory.EnumerateFiles(source, "*", SearchOption.AllDirectories))
        {
            string to = Path.Combine(target, Path.GetRelativePath(source, file));
            Directory.CreateDirectory(Path.GetDirectoryName(to)!);
            File.Copy(file, to);
            File.SetAttributes(to, FileAttributes.Normal);
        }
    }

    private async Task<QualityFigures> MeasureAsync(string source, BenchVariant variant, GenerationRequest recipe, CancellationToken ct)
    {
        string candidateDir = await EnsureVariantAsync(source, variant, recipe.Steps!.Value, ct);
        var options = new PipelineOptions { WarmUp = false };
        using var reference = await StableDiffusionPipeline.LoadAsync(source, options, cancellationToken: ct);
        using var candidate = await StableDiffusionPipeline.LoadAsync(candidateDir, options, cancellationToken: ct);
        var cases = EvaluationCase.Cycle([.. ShapesCaption.All.Select(c => c.ToString())], pairs, firstSeed: 1000);
        var images = await QualityEvaluator.RunAsync(new EvaluationSide(reference, recipe with { CacheInterval = null }), new EvaluationSide(candidate, recipe), cases, null, ct);
        var s = EvaluationSummary.Of(images);
        string description = $"{recipe.Scheduler} {recipe.Steps} steps, guidance {Guidance:0.#}, {recipe.Decoder ?? "full"} decoder{(recipe.CacheInterval is { } k ? $", DeepCache every {k}" : "")}";
        var figures = new QualityFigures(description, s.Cases, s.ReferenceAccuracy, s.CandidateAccuracy, s.Psnr.Median, s.Ssim.Mean);
        progress.Report($"quality of {variant.Name} ({description}) on {Path.GetFileName(source)}: judge {figures.Candidate} (FP32 {figures.Fp32}), PSNR median {figures.PsnrMedian:F1} dB, SSIM {figures.SsimMean:F3}");
        return figures;
    }

    /// <summary>
    /// The variant's optimizer recipe applied to <paramref name="source"/>, made once and reused while the recipe and the model are the same;
    /// a few-step model calibrates on its own few steps.
    /// </summary>
    private async Task<string> EnsureVariantAsync(string source, BenchVariant variant, int steps, CancellationToken ct)
    {
        if (!variant.Int8 && variant.TomeRatio == 0 && !variant.DeepCache) return source;
        bool fewStep = ModelBundle.Open(source).GuidanceDistilled;
        string dir = Path.Combine(work, "quality", variant.Name);
        string stamp = Path.Combine(dir, ".bench-variant.json");
        string recipe = JsonSerializer.Serialize(new
        {
            source, unet = File.GetLastWriteTimeUtc(ModelBundle.Open(source).Unet.Path).Ticks, variant, quantization = new QuantizationOptions(), steps = fewStep ? steps : 0,
        });
        if (File.Exists(stamp) && await File.ReadAllTextAsync(stamp, ct) == recipe) return dir;
        if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
        await BundleOptimizer.OptimizeAsync(new OptimizeOptions
        {
            ModelDirectory = source, OutputDirectory = dir, TomeRatio = variant.TomeRatio, FuseAttention = true, Batch = variant.Batch,
            CalibrationSteps = fewStep ? steps : null,
            DeepCache = variant.DeepCache, QuantizeTextEncoder = variant.Int8TextEncoder, Quantization = variant.Int8 ? new QuantizationOptions() : null,
            Fidelity = false, // measured here, on more pairs
        }, new SynchronousProgress(m => progress.Report($"optimize {Path.GetFileName(source)} {variant.Name}: {m}")), ct);
        await File.WriteAllTextAsync(stamp, recipe, ct);
        return dir;
    }
}
