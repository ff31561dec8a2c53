using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Mvc;
using Microsoft.Azure.Functions.Worker;
using Microsoft.Extensions.Options;
using SdFunctions.Inference.Pipeline;
using SdFunctions.Inference.Runtime;
using SdFunctions.Jobs;

namespace SdFunctions.Functions;

/// <summary>
/// GET /api/health (anonymous): whether this instance can run jobs and what it runs. 200 with status ok; 503 with status
/// unavailable when the triggers' queue does not answer or exist, or the model failed to load (each check says why and since
/// when), so a monitor sees a deployment that would accept jobs and never finish them. Never loads the model, never shows
/// settings. The model's fields come from its profile (<see cref="ModelProfiles"/>), known before this instance loads it.
/// </summary>
public sealed class HealthApi(PipelineHolder pipelines, ModelProfiles profiles, ServiceHealth health, IOptions<JobsOptions> jobs)
{
    [Function("Health")]
    public async Task<IActionResult> Run([HttpTrigger(AuthorizationLevel.Anonymous, "get", Route = "health")] HttpRequest req)
    {
        var pipeline = pipelines.Loaded;
        var profile = pipeline?.Profile ?? await profiles.GetAsync(req.HttpContext.RequestAborted);
        var report = await health.CheckAsync(req.HttpContext.RequestAborted);
        return HttpResults.Json(new
        {
            Status = report.IsHealthy ? HealthCheck.Ok : HealthCheck.Unavailable,
            Checks = report,
            ModelLoaded = pipeline is not null,
            Model = profile?.Model,
            Family = profile?.Family,
            // What requests may choose.
            Schedulers = profile?.SchedulerNames,
            Decoders = profile?.Decoders,
            Defaults = profile?.DefaultsFor(null),
            SchedulerDefaults = profile?.Schedulers,
            DefaultDecoder = profile?.DefaultDecoder,
            GuidanceDistilled = profile?.GuidanceDistilled,
            UNetBatch = profile?.UNetBatch,
            DeepCache = profile?.DeepCache, // cacheInterval > 1 is accepted
            ImageToImage = profile?.ImageToImage,
            ExamplePrompts = profile?.ExamplePrompts, // from the model's card: the playground offers them
            // Under Model:MemoryBudget: how the full VAE decodes and the peak the plan expects (null without a budget).
            Memory = pipeline?.Memory is { Budget: { } budget } plan
                ? new { BudgetBytes = budget, plan.DecodeTileSize, plan.ExpectedPeakBytes, plan.Met } : null,
            ImageSize = $"{jobs.Value.Width}x{jobs.Value.Height}",
            OnnxRuntime = OnnxSessionFactory.OrtVersion,
            Cpu = new { CpuInfo.Model, CpuInfo.PhysicalCores, Avx512Vnni = CpuInfo.Avx512Vnni, Features = CpuInfo.FeatureSummary },
            InstanceId = JobUsage.CurrentInstanceId,
        }, report.IsHealthy ? StatusCodes.Status200OK : StatusCodes.Status503ServiceUnavailable);
    }
}
