using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.ML.OnnxRuntime;
using SdFunctions.Inference.Bundle;
using SdFunctions.Inference.Models;
using SdFunctions.Inference.Pipeline;
using SdFunctions.Inference.Quality;
using SdFunctions.Inference.Runtime;
using SdFunctions.Optimizer.Quantization;

namespace SdFunctions.Optimizer;

/// <summary>How far the optimized UNet's noise prediction is from the source's, for the calls of one timestep range.</summary>
/// <param name="From">First timestep of the range (inclusive).</param>
/// <param name="To">Last timestep of the range (exclusive).</param>
/// <param name="MeanRelativeL2">‖optimized − source‖₂ / ‖source‖₂ over a call's output, averaged over the range's calls.</param>
public sealed record TimestepError(int From, int To, int Calls, double MeanRelativeL2, double MaxRelativeL2);

/// <summary>An optimized bundle measured against its source on the calibration prompts (written into the optimize manifest).</summary>
/// <param name="Psnr">End-to-end: the same prompt and seed through both bundles, PSNR of the optimized image against the source's.</param>
/// <param name="SourceAccuracy">The shapes judge on the source's images, when the prompts are captions of its grammar (else null).</param>
public sealed record FidelityReport(int Prompts, string Scheduler, int Steps, IReadOnlyList<TimestepError> UNetError, Spread Psnr, Spread Ssim,
    Accuracy? SourceAccuracy, Accuracy? OptimizedAccuracy);

/// <summary>
/// The fidelity gate of <c>sdf optimize</c>: the source's float pipeline runs the calibration prompts (seed = the prompt's
/// index, the bundle's default scheduler), its UNet inputs are fed to both UNets (output error per quarter of the timestep
/// range), and both pipelines draw each prompt (PSNR, SSIM, the judge where it applies).
/// </summary>
public static class FidelityCheck
{
    /// <summary>UNet calls compared per range, at most: enough for a mean, few enough for a 512² model.</summary>
    private const int CallsPerRange = 4;

    public static async Task<FidelityReport> MeasureAsync(string source, string optimized, IReadOnlyList<string> prompts, int steps, int batch,
        IProgress<string>? progress, CancellationToken ct)
    {
        var session = new SessionSettings();
        progress?.Report($"fidelity: {prompts.Count} prompts × {steps} steps through the source and the optimized bundle");
        // Both at the optimized UNet's static size (the source's graph takes any).
        var fixedSize = ModelBundle.Open(optimized);
        int width = fixedSize.DefaultWidth, height = fixedSize.DefaultHeight;
        var inputs = await Calibration.CollectInputsAsync(source, prompts, steps, batch, session, progress: null, ct, width, height);
        var unetError = UNetErrorByTimestep(source, optimized, inputs.UNet, batch, session);

        var options = new PipelineOptions { WarmUp = false, Session = session, Width = width, Height = height };
        using var reference = await StableDiffusionPipeline.LoadAsync(source, options, cancellationToken: ct);
        using var candidate = await StableDiffusionPipeline.LoadAsync(optimized, options, cancellationToken: ct);
        var recipe = Calibration.RequestFor(prompts[0], steps, batch, reference.Bundle.GuidanceDistilled);
        var cases = prompts.Select((p, i) => new EvaluationCase(p, i)).ToList();
        var images = await QualityEvaluator.RunAsync(new EvaluationSide(reference, recipe), new EvaluationSide(candidate, recipe), cases, null, ct);
        var summary = EvaluationSummary.Of(images);
        return new FidelityReport(prompts.Count, reference.DefaultScheduler, steps, unetError, summary.Psnr, summary.Ssim,
            summary.Judged > 0 ? summary.ReferenceAccuracy : null, summary.Judged > 0 ? summary.CandidateAccuracy : null);
    }

    private static List<TimestepError> UNetErrorByTimestep(string source, string optimized, IReadOnlyList<UNetInputs> inputs, int batch, SessionSettings session)
    {
        var (a, b) = (ModelBundle.Open(source), ModelBundle.Open(optimized));
        // The optimized UNet's static size is the one the calibration ran at.
        int latentH = b.DefaultHeight / b.VaeScaleFactor, latentW = b.DefaultWidth / b.VaeScaleFactor, tokens = a.Tokenizer.MaxLength;
        int hidden = inputs[0].EncoderHiddenStates.Length / (batch * tokens);
        var factory = new OnnxSessionFactory(session, NullLogger.Instance);
        using var sourceUnet = new UNetModel(factory, a, batch, latentH, latentW, tokens, hidden);
        using var optimizedUnet = new UNetModel(factory, b, batch, latentH, latentW, tokens, hidden);
        using var run = new RunOptions();
        var errors = new List<TimestepError>();
        foreach (int from in new[] { 0, 250, 500, 750 })
        {
            var calls = inputs.Where(i => i.Timestep >= from && i.Timestep < from + 250).ToList();
            if (calls.Count == 0) continue;
            var picked = Enumerable.Range(0, Math.Min(CallsPerRange, calls.Count)).Select(k => calls[k * calls.Count / Math.Min(CallsPerRange, calls.Count)]);
            var relative = picked.Select(call =>
            {
                float[] Run(UNetModel unet)
                {
                    call.Sample.CopyTo(unet.Sample, 0);
                    call.EncoderHiddenStates.CopyTo(unet.EncoderHiddenStates, 0);
                    call.TimestepCond.CopyTo(unet.TimestepCond, 0);
                    unet.Run(call.Timestep, run);
                    return unet.Output;
                }
                float[] expected = Run(sourceUnet), actual = Run(optimizedUnet);
                double num = 0, den = 0;
                for (int i = 0; i < expected.Length; i++) { double d = actual[i] - (double)expected[i]; num += d * d; den += (double)expected[i] * expected[i]; }
                return Math.Sqrt(num / Math.Max(den, 1e-30));
            }).ToList();
            errors.Add(new TimestepError(from, from + 250, relative.Count, relative.Average(), relative.Max()));
        }
        return errors;
    }
}
