using Microsoft.Extensions.Logging;
using SdFunctions.Inference.Pipeline;

namespace SdFunctions.Inference.Tests;

/// <summary>Fractional scheduler timesteps on an int64 UNet: truncated like diffusers' ONNX pipeline, logged once.</summary>
public class TimestepTruncationTests
{
    [Fact]
    public async Task AnInt64UNetWarnsOnceAboutFractionalTimesteps()
    {
        var logger = new CapturingLogger();
        using var pipeline = await StableDiffusionPipeline.LoadAsync(Fixtures.TinySd,
            new PipelineOptions { WarmUp = false, Session = TinyPipelineFixture.CachedSessions }, logger);
        Assert.True(pipeline.IntegerTimestepUnet);

        await pipeline.GenerateAsync(new GenerationRequest { Prompt = "x", Steps = 3, Seed = 1, Scheduler = "ddim" });
        Assert.DoesNotContain(logger.Warnings, w => w.Contains("truncated")); // DDIM's timesteps are whole
        await pipeline.GenerateAsync(new GenerationRequest { Prompt = "x", Steps = 3, Seed = 1, Scheduler = "euler" });
        await pipeline.GenerateAsync(new GenerationRequest { Prompt = "x", Steps = 3, Seed = 1, Scheduler = "lms" });
        Assert.Single(logger.Warnings, w => w.Contains("truncated"));
    }

    [Fact]
    public async Task AFloatTimestepUNetTakesTheFractionWithoutWarning()
    {
        var logger = new CapturingLogger();
        // The old exporter writes no unet/config.json, so give the size the tiny bundle's int64 UNet has.
        using var floatPipeline = await StableDiffusionPipeline.LoadAsync(ModelTests.FloatTimestepBundle.Value,
            new PipelineOptions { Width = 256, Height = 256, WarmUp = false, Session = TinyPipelineFixture.CachedSessions }, logger);
        using var intPipeline = await StableDiffusionPipeline.LoadAsync(Fixtures.TinySd,
            new PipelineOptions { WarmUp = false, Session = TinyPipelineFixture.CachedSessions });
        Assert.False(floatPipeline.IntegerTimestepUnet);

        var request = new GenerationRequest { Prompt = "x", Steps = 3, Seed = 1, Scheduler = "euler" };
        var withFraction = await floatPipeline.GenerateAsync(request);
        var truncated = await intPipeline.GenerateAsync(request);
        Assert.Empty(logger.Warnings);
        // Same weights; only the timestep's fraction differs (euler with 3 steps: 999, 499.5, 0).
        Assert.NotEqual(withFraction.Latents, truncated.Latents);
        var ddim = request with { Scheduler = "ddim" };
        float[] viaInt = (await intPipeline.GenerateAsync(ddim)).Latents, viaFloat = (await floatPipeline.GenerateAsync(ddim)).Latents;
        Close.AllClose(viaInt, viaFloat, 1e-3, "whole timesteps: int64 and float32 UNets agree");
    }

    private sealed class CapturingLogger : ILogger
    {
        public List<string> Warnings { get; } = [];
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
        public bool IsEnabled(LogLevel logLevel) => true;
        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (logLevel >= LogLevel.Warning) lock (Warnings) Warnings.Add(formatter(state, exception));
        }
    }
}
