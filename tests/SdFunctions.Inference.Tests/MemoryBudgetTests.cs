using SdFunctions.Inference.Bundle;
using SdFunctions.Inference.Pipeline;
using SdFunctions.Inference.Runtime;
using Xunit.Abstractions;

namespace SdFunctions.Inference.Tests;

/// <summary>Tests that read the process's memory run alone: another test's allocations would be in their peaks.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class MemoryMeasurements
{
    public const string Name = "memory measurements";
}

/// <summary>PipelineOptions.MemoryBudget: the plan chosen from what was measured at load, what a generation then does, and its peak.</summary>
[Collection(MemoryMeasurements.Name)]
public class MemoryBudgetTests(ITestOutputHelper output)
{
    private const long GB = 1_000_000_000;

    [Fact]
    public void TheWholeDecodeIsKeptWhenItFits()
    {
        var plan = MemoryPlan.Choose(3 * GB, 1 * GB, 5.6e3, 512, 512); // 1 GB + 1.47 GB
        Assert.Null(plan.DecodeTileSize);
        Assert.True(plan.Met && plan.ReleaseArenas);
        Assert.Equal(1 * GB + (long)(5.6e3 * 512 * 512), plan.ExpectedPeakBytes);
    }

    [Theory]
    [InlineData(2.0, 384)] // 1 GB + 0.83 GB
    [InlineData(1.5, 256)] // 384² needs 1.83 GB, 256² 1.37 GB
    [InlineData(1.2, 128)] // 192² needs 1.21 GB
    public void TheLargestTileThatFitsIsChosen(double budgetGb, int tile)
    {
        var plan = MemoryPlan.Choose((long)(budgetGb * GB), 1 * GB, 5.6e3, 512, 512);
        Assert.Equal(tile, plan.DecodeTileSize);
        Assert.True(plan.Met);
        Assert.InRange(plan.ExpectedPeakBytes!.Value, 1 * GB, (long)(budgetGb * GB));
    }

    [Fact]
    public void ABudgetThatCannotBeMetGetsTheLeanestPlanAndSaysSo()
    {
        var plan = MemoryPlan.Choose(GB / 2, 1 * GB, 5.6e3, 512, 512); // resident alone is over it
        Assert.Equal(GenerationRequest.MinTileSize, plan.DecodeTileSize);
        Assert.False(plan.Met);
        // An image no larger than the smallest tile has nothing to tile.
        Assert.Null(MemoryPlan.Choose(GB / 2, 1 * GB, 5.6e3, 64, 64).DecodeTileSize);
        Assert.Throws<ArgumentOutOfRangeException>(() => MemoryPlan.Choose(0, 1, 1, 64, 64));
    }

    [Theory]
    [InlineData("1.5GB", 1_500_000_000)]
    [InlineData("2.5 gb", 2_500_000_000)]
    [InlineData("1536MiB", 1536L << 20)]
    [InlineData("3GiB", 3L << 30)]
    [InlineData("800000000", 800_000_000)]
    [InlineData("512KB", 512_000)]
    public void SizesAreReadWithTheirUnits(string text, long bytes) => Assert.Equal(bytes, MemoryPlan.ParseBytes(text));

    [Theory]
    [InlineData("1.5XB")]
    [InlineData("-1GB")]
    [InlineData("GB")]
    [InlineData("lots")]
    [InlineData("0")]
    public void BadSizesAreRefused(string text) => Assert.Throws<FormatException>(() => MemoryPlan.ParseBytes(text));

    private static GenerationRequest Request => new() { Prompt = "a lighthouse", Steps = 3, Seed = 11, Scheduler = "ddim" };

    [Fact]
    public async Task AnUnreachableBudgetDecodesInTheSmallestTilesWithTheSamePixelsAsAskingForThem()
    {
        using var budgeted = await StableDiffusionPipeline.LoadAsync(Fixtures.TinySd, new PipelineOptions { MemoryBudget = 1, Session = TinyPipelineFixture.CachedSessions });
        Assert.False(budgeted.Memory.Met);
        Assert.Equal(GenerationRequest.MinTileSize, budgeted.Memory.DecodeTileSize);
        Assert.NotEqual(budgeted.Profile.FullDecodeBytesPerPixel, budgeted.Memory.DecodeBytesPerPixel); // measured on this VAE, not estimated
        output.WriteLine($"tiny bundle: expected peak {budgeted.Memory.ExpectedPeakBytes / 1e9:F3} GB");
        var result = await budgeted.GenerateAsync(Request with { TiledDecode = false }); // the budget wins over a whole decode
        Assert.Equal(GenerationRequest.MinTileSize, result.DecodeTileSize);

        using var plain = await StableDiffusionPipeline.LoadAsync(Fixtures.TinySd, new PipelineOptions { WarmUp = false, Session = TinyPipelineFixture.CachedSessions });
        Assert.Null(plain.Memory.Budget);
        var asked = await plain.GenerateAsync(Request with { TiledDecode = true, TileSize = GenerationRequest.MinTileSize });
        Assert.Equal(asked.Latents, result.Latents);
        Assert.Equal(asked.Rgb, result.Rgb); // releasing arenas changes no number
        Assert.Null((await plain.GenerateAsync(Request)).DecodeTileSize); // no budget: whole, as before
    }

    [Fact]
    public async Task AServiceThatDecodesWithTaesdDoesNotLoadTheFullVaeToPlan()
    {
        using var budgeted = await StableDiffusionPipeline.LoadAsync(Fixtures.TinySdWithTaesd,
            new PipelineOptions { MemoryBudget = 1, DefaultDecoder = "tiny", Session = TinyPipelineFixture.CachedSessions });
        Assert.DoesNotContain(budgeted.Sessions, s => s.Component == "vae_decoder");
        // Not measured: the profile's estimate from the VAE's 32 full-resolution channels (SD 1.5's 128 give its measured 5.6 kB).
        Assert.Equal(32 * ModelProfile.DecodeTensorsPerPixel * sizeof(float), budgeted.Memory.DecodeBytesPerPixel);
        Assert.InRange(128 * ModelProfile.DecodeTensorsPerPixel * sizeof(float), 5.6e3 * 0.98, 5.6e3 * 1.02);
        Assert.Equal(GenerationRequest.MinTileSize, budgeted.Memory.DecodeTileSize); // for a request that asks for the full VAE
        var result = await budgeted.GenerateAsync(Request);
        Assert.Equal("tiny", result.Decoder);
        Assert.Null(result.DecodeTileSize);
    }

    [Fact]
    public async Task AGenerousBudgetKeepsWholeDecodesAndEveryGenerationRecordsItsOwnPeak()
    {
        using var budgeted = await StableDiffusionPipeline.LoadAsync(Fixtures.TinySd, new PipelineOptions { MemoryBudget = 1000 * GB, Session = TinyPipelineFixture.CachedSessions });
        Assert.True(budgeted.Memory.Met);
        Assert.Null(budgeted.Memory.DecodeTileSize);
        Assert.InRange(budgeted.Memory.ExpectedPeakBytes!.Value, ProcessMemory.Resident / 4, 1000 * GB);

        // The peak is this generation's, restarted at its start: a 400 MB spike just before it is in the process's lifetime peak, not in it.
        nint spike = System.Runtime.InteropServices.Marshal.AllocHGlobal(400_000_000);
        for (int offset = 0; offset < 400_000_000; offset += 4096) System.Runtime.InteropServices.Marshal.WriteByte(spike, offset, 1);
        System.Runtime.InteropServices.Marshal.FreeHGlobal(spike);
        long lifetime = System.Diagnostics.Process.GetCurrentProcess().PeakWorkingSet64;
        var result = await budgeted.GenerateAsync(Request);
        Assert.Null(result.DecodeTileSize);
        var bytes = Assert.NotNull(result.PeakMemoryBytes);
        output.WriteLine($"tiny bundle generation: peak {bytes / 1e6:F0} MB, resident after {ProcessMemory.Resident / 1e6:F0} MB, lifetime peak {lifetime / 1e6:F0} MB");
        Assert.InRange(bytes, ProcessMemory.Resident / 2, lifetime - 300_000_000);
    }
}
