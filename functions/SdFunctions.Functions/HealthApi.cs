using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Mvc;
using Microsoft.Azure.Functions.Worker;
using Microsoft.Extensions.Options;
using SdFunctions.Inference.Pipeline;
using SdFunctions.Inference.Runtime;
using SdFunctions.Jobs;

namespace SdFunctions.Functions;

/// <summary>GET /api/health (anonymous): what this instance runs. Never loads the model, never shows settings.</summary>
public sealed class HealthApi(PipelineHolder pipelines, IOptions<JobsOptions> jobs)
{
    [Function("Health")]
    public IActionResult Run([HttpTrigger(AuthorizationLevel.Anonymous, "get", Route = "health")] HttpRequest req)
    {
        var pipeline = pipelines.Loaded;
        return HttpResults.Json(new
        {
            Status = "ok",
            ModelLoaded = pipeline is not null,
            Model = pipeline?.Bundle.Name,
            // What requests may choose, once this instance has loaded the model (null before).
            Schedulers = pipeline?.SupportedSchedulers,
            Decoders = pipeline?.SupportedDecoders,
            Defaults = pipeline?.DefaultsFor(null),
            DefaultDecoder = pipeline?.DefaultDecoder,
            GuidanceDistilled = pipeline?.Bundle.GuidanceDistilled,
            UNetBatch = pipeline?.DefaultUNetBatch,
            DeepCache = pipeline is null ? (bool?)null : pipeline.Bundle.DeepCache is not null, // cacheInterval > 1 is accepted
            // Under Model:MemoryBudget: how the full VAE decodes and the peak the plan expects (null without a budget).
            Memory = pipeline?.Memory is { Budget: { } budget } plan
                ? new { BudgetBytes = budget, plan.DecodeTileSize, plan.ExpectedPeakBytes, plan.Met } : null,
            ImageSize = $"{jobs.Value.Width}x{jobs.Value.Height}",
            OnnxRuntime = OnnxSessionFactory.OrtVersion,
            Cpu = new { CpuInfo.Model, CpuInfo.PhysicalCores, Avx512Vnni = CpuInfo.Avx512Vnni, Features = CpuInfo.FeatureSummary },
            InstanceId = JobUsage.CurrentInstanceId,
        });
    }
}
